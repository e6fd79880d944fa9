"""Errors the ``easynlp`` command reports as one line.

Bad input (flags, parameters, tables) raises ``ValueError`` subclasses: exit status 2.
:class:`RunError` is a failure while running that is not the input's fault: exit status 1.
"""


class RunError(RuntimeError):
    """A failure while running (non-finite loss, another process failed); the CLI exits with 1."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's store errors run to many), else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

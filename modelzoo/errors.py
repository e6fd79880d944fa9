"""Errors raised by the ModelZoo. Every message is one line naming what failed (name, URI, path) and why."""

from __future__ import annotations


class ModelZooError(RuntimeError):
    """A checkpoint could not be resolved, downloaded, verified or installed.

    The message is always one line (line breaks in a reason taken from elsewhere become spaces), so a
    command can print it as ``prog: error: <message>``.
    """

    def __init__(self, message: object = "", *args: object):
        super().__init__(" ".join(str(message).split()), *args)


class UnknownModelError(ModelZooError):
    """The name is neither a registered model, a supported URI nor an existing path (bad input)."""


class ChecksumError(ModelZooError):
    """Downloaded bytes do not match the sha256 or size recorded in the index."""


class UnsafeArchiveError(ModelZooError):
    """An archive member would escape the extraction directory or is not a plain file/directory."""


class StorageError(ModelZooError):
    """A storage operation failed. ``transient`` tells whether retrying may help."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient

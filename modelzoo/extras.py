"""Optional dependencies: the extras of the ``easynlp-artist`` distribution and the one message that
names the extra to install when a command needs a package that is not there.

The core install is what predict and fine-tuning need; the packages of ``[transe]``, ``[s3]``,
``[fid]``, ``[serve]`` and ``[notebook]`` are imported where they are used, through :func:`require`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from modelzoo.errors import ModelZooError

DISTRIBUTION = "easynlp-artist"


class MissingExtraError(ModelZooError):
    """A package of an extra is not installed; the message is one line ending in the pip command."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(f'{purpose} needs {package}, which is not installed: '
                         f'pip install "{DISTRIBUTION}[{extra}]"')
        self.package, self.extra = package, extra


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or :class:`MissingExtraError` naming ``extra`` when it is not installed.

    A package that is installed but fails to import for another reason (one of its own imports is
    missing, a broken build) keeps its own error: that one says what is wrong.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise
        raise MissingExtraError(top, extra, purpose) from None

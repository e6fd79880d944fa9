"""The base class of AppZoo applications.

An application is a class registered under the ``easynlp.appzoo`` entry-point group::

    # setup.py
    entry_points={"easynlp.appzoo": ["my_app=my_package.app:MyApp"]}

    @dataclass
    class MyParams:            # its --user_defined_parameters
        size: int = 256

    class MyApp(BaseApp):
        name = "my_app"
        aliases = ("my_old_name",)
        description = "one line shown by easynlp --help"
        Params = MyParams

        def train(self, args: CommonArgs, params: MyParams) -> dict | None: ...

Modes the class does not override are reported as unsupported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from appzoo.args import MODES, CommonArgs


class UnsupportedModeError(ValueError):
    """The application does not implement the requested mode."""


@dataclass
class NoParams:
    """Parameters of an application that takes no user_defined_parameters."""


class BaseApp:
    """Subclass, set the class attributes and override the modes the application supports."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams

    @classmethod
    def supported_modes(cls) -> tuple[str, ...]:
        return tuple(mode for mode in MODES if getattr(cls, mode) is not getattr(BaseApp, mode))

    @classmethod
    def validate_class(cls) -> None:
        """Raise TypeError when the class is not a usable application."""
        if not dataclasses.is_dataclass(cls.Params) or not isinstance(cls.Params, type):
            raise TypeError(f"{cls.__qualname__}.Params must be a dataclass type")
        if not isinstance(cls.aliases, tuple) or not all(isinstance(a, str) for a in cls.aliases):
            raise TypeError(f"{cls.__qualname__}.aliases must be a tuple of str")

    def run(self, args: CommonArgs, params: Any) -> dict | None:
        """Dispatch on ``args.mode``."""
        if args.mode not in self.supported_modes():
            raise UnsupportedModeError(
                f"app {self.name or type(self).__name__!r} does not support --mode={args.mode} "
                f"(supported: {', '.join(self.supported_modes()) or 'none'})"
            )
        return getattr(self, args.mode)(args, params)

    def train(self, args: CommonArgs, params: Any) -> dict | None:
        raise UnsupportedModeError(f"app {self.name!r} does not support --mode=train")

    def evaluate(self, args: CommonArgs, params: Any) -> dict | None:
        raise UnsupportedModeError(f"app {self.name!r} does not support --mode=evaluate")

    def predict(self, args: CommonArgs, params: Any) -> dict | None:
        raise UnsupportedModeError(f"app {self.name!r} does not support --mode=predict")

    def serve(self, args: CommonArgs, params: Any) -> dict | None:
        raise UnsupportedModeError(f"app {self.name!r} does not support --mode=serve")

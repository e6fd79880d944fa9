"""``--user_defined_parameters``: whitespace-separated ``key=value`` pairs → an app's typed dataclass.

Values are converted from the dataclass field types: ``int``, ``float``, ``bool`` (true/false, 1/0,
yes/no, on/off), ``str``, ``Optional[...]`` (``none``/``null`` → None), ``Literal[...]`` and tuples/lists
of scalars written with commas (``size=256,256``). Unknown keys (with a "did you mean" hint),
duplicate keys, tokens without ``=`` and missing required keys are errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from modelzoo.files import parse_bool

T = TypeVar("T")

_NONE_WORDS = frozenset({"none", "null"})


class ParamsError(ValueError):
    """A user_defined_parameters entry could not be read."""


def parse_user_defined_parameters(raw: str | Mapping[str, Any] | None, schema: type[T]) -> T:
    """Build ``schema`` (a dataclass) from a ``key=value`` string or a dict.

    From a string every value is text and is converted; from a dict, values already of the
    field's type are kept and strings are converted like command-line text.
    """
    if not dataclasses.is_dataclass(schema) or not isinstance(schema, type):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    pairs = _split(raw) if raw is None or isinstance(raw, str) else dict(raw)
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    values: dict[str, Any] = {}
    for key, value in pairs.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            known = ", ".join(sorted(fields)) or "none"
            raise ParamsError(f"user_defined_parameters: unknown key {key!r}{hint} (known keys: {known})")
        try:
            values[key] = coerce(value, hints[key])
        except ValueError as exc:
            raise ParamsError(f"user_defined_parameters: {key}={value!s}: {exc}") from None
    missing = [
        name for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ParamsError(f"user_defined_parameters: missing required key(s): {', '.join(missing)}")
    try:
        return schema(**values)
    except ValueError as exc:
        raise ParamsError(f"user_defined_parameters: {exc}") from None


def _split(raw: str | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for position, token in enumerate((raw or "").split(), start=1):
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ParamsError(
                f"user_defined_parameters: token {position} {token!r} is not of the form key=value"
            )
        if key in pairs:
            raise ParamsError(f"user_defined_parameters: key {key!r} is given twice")
        pairs[key] = value
    return pairs


def coerce(value: Any, annotation: Any) -> Any:
    """Convert ``value`` (text, or an already-typed Python value) to ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            if len(options) < len(args):
                return None
            raise ValueError("None is not allowed here")
        errors = []
        for option in options:
            try:
                return coerce(value, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        items = [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"expected a comma-separated list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values, got {len(items)}")
            converted = [coerce(item, arg) for item, arg in zip(items, args)]
        else:
            element = args[0] if args else Any
            converted = [coerce(item, element) for item in items]
        return tuple(converted) if origin is tuple else converted
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return parse_bool(value)
        raise ValueError(f"expected a boolean, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        raise ValueError(f"expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        raise ValueError(f"expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected text, got {value!r}")
    raise TypeError(f"unsupported parameter type {annotation!r}")

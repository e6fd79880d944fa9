"""``--user_defined_parameters``: whitespace-separated ``key=value`` pairs → an app's typed dataclass.

Values are converted from the dataclass field types: ``int``, ``float``, ``bool`` (true/false, 1/0,
yes/no, on/off), ``str``, ``Optional[...]`` (``none``/``null`` → None), ``Literal[...]`` and tuples/lists
of scalars written with commas (``size=256,256``). Unknown keys (with a "did you mean" hint),
duplicate keys, tokens without ``=`` and missing required keys are errors.

Parameters may be grouped by what they configure: a field whose type is itself a dataclass is a
*group* (declared with :func:`group`), and its fields are keys of the same flat ``key=value``
list. Fields declared with :func:`param` carry one line of help; :func:`describe_params` turns the
schema into the per-app help text, so the keys are documented in exactly one place.
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


def param(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A parameter field with one line of help (``dataclasses.field`` otherwise)."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def group(schema: type, title: str, modes: tuple[str, ...] = ()) -> Any:
    """A group of parameters (a dataclass) inside a parameter dataclass; ``modes``: the modes it
    applies to (empty: all), used by the help text."""
    return dataclasses.field(default_factory=schema, metadata={"title": title, "modes": modes})


def _groups(schema: type) -> list[tuple[str | None, type, str, tuple[str, ...]]]:
    """(attribute or None for the top level, dataclass, title, modes) of a schema and its groups."""
    hints = typing.get_type_hints(schema)
    out: list[tuple[str | None, type, str, tuple[str, ...]]] = [(None, schema, "", ())]
    for f in dataclasses.fields(schema):
        if f.init and dataclasses.is_dataclass(hints[f.name]):
            out.append((f.name, hints[f.name], f.metadata.get("title", f.name), tuple(f.metadata.get("modes", ()))))
    return out


def _keys(schema: type) -> dict[str, tuple[str | None, dataclasses.Field, Any]]:
    """Every key → (its group attribute or None, its field, its type)."""
    keys: dict[str, tuple[str | None, dataclasses.Field, Any]] = {}
    for attr, cls, _, _ in _groups(schema):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init or (attr is None and dataclasses.is_dataclass(hints[f.name])):
                continue
            if f.name in keys:
                raise TypeError(f"{schema.__qualname__}: parameter {f.name!r} is defined twice")
            keys[f.name] = (attr, f, hints[f.name])
    return keys


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def parse_user_defined_parameters(raw: str | Mapping[str, Any] | None, schema: type[T]) -> T:
    """Build ``schema`` (a dataclass) from a ``key=value`` string or a dict.

    From a string every value is text and is converted; from a dict, values already of the
    field's type are kept and strings are converted like command-line text.
    """
    if not dataclasses.is_dataclass(schema) or not isinstance(schema, type):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    pairs = _split(raw) if raw is None or isinstance(raw, str) else dict(raw)
    keys = _keys(schema)
    values: dict[str | None, dict[str, Any]] = {attr: {} for attr, *_ in _groups(schema)}
    for key, value in pairs.items():
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            if isinstance(value, str) and "," in value and "=" in value:
                hint += " (parameters are separated by spaces, not commas)"
            known = ", ".join(sorted(keys)) or "none"
            raise ParamsError(f"user_defined_parameters: unknown key {key!r}{hint} (known keys: {known})")
        attr, _, annotation = keys[key]
        try:
            values[attr][key] = coerce(value, annotation)
        except ValueError as exc:
            hint = " (parameters are separated by spaces, not commas)" if "," in str(value) and "=" in str(value) else ""
            raise ParamsError(f"user_defined_parameters: {key}={value!s}: {exc}{hint}") from None
    missing = [k for k, (attr, f, _) in keys.items() if k not in values[attr] and _required(f)]
    if missing:
        raise ParamsError(f"user_defined_parameters: missing required key(s): {', '.join(missing)}")
    try:
        top = values.pop(None)
        for attr, cls, *_ in _groups(schema)[1:]:
            top[attr] = cls(**values[attr])
        return schema(**top)
    except ValueError as exc:
        raise ParamsError(f"user_defined_parameters: {exc}") from None


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin in (tuple, list):
        return f"{_type_name(args[0]) if args else 'str'},..."
    return {bool: "bool", int: "int", float: "float", str: "text"}.get(annotation, str(annotation))


def describe_params(schema: type, mode: str | None = None) -> str:
    """The help text of a parameter dataclass: every key with its type, default and help line,
    by group; with ``mode``, only the groups that apply to that mode."""
    lines = []
    for _, cls, title, modes in _groups(schema):
        if mode is not None and modes and mode not in modes:
            continue
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if not f.init or dataclasses.is_dataclass(hints[f.name]):
                continue
            if _required(f):
                shown = "required"
            else:
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                if isinstance(default, (tuple, list)):
                    default = ",".join(map(str, default))
                shown = f"default {'none' if default is None else default}"
            rows.append(f"  {f.name}={_type_name(hints[f.name])}  ({shown})  {f.metadata.get('help', '')}".rstrip())
        if rows:
            lines.append(f"{title or 'parameters'}:")
            lines.extend(rows)
    return "\n".join(lines)


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

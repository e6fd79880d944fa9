"""Config dataclasses read from untrusted JSON: unknown keys and wrong types are errors naming the field.

``config.json`` comes with checkpoints from anywhere, so a value is checked against its field's
annotation before any size is used (``"n_layer": "12"`` or ``true`` is an error, not a bare
``TypeError`` deep inside a constructor). Whole-number floats (``12.0``) are accepted as integers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def _typed(value: Any, annotation: Any, where: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: no allowed type fits {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r} ({type(value).__name__})")
        element = args[0] if args else Any
        items = [_typed(v, element, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be text, got {value!r} ({type(value).__name__})")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], section: str) -> T:
    """``cls(**data)`` with unknown keys and mistyped values reported as ``section.field``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{section} must be an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {section} fields: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**{k: _typed(v, hints[k], f"{section}.{k}") for k, v in data.items()})

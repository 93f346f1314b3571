"""IR ⇄ plain data (dicts, lists, strings), for golden files, debugging and the xDS cache key.

Generic over the dataclasses in ``waypoint.model``: enums become their values, tuples become
lists, and fields equal to their defaults are left out so golden files stay short.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from waypoint import model


def to_data(value: Any) -> Any:
    """Turn an IR object into plain data, dropping fields that hold their default."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if _is_default(field, item):
                continue
            out[field.name] = to_data(item)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_data(item) for item in value]
    return value


def _is_default(field: dataclasses.Field[Any], item: Any) -> bool:
    if field.default is not dataclasses.MISSING:
        return bool(item == field.default)
    return False


def from_data(cls: type[Any], data: Any) -> Any:
    """Rebuild an IR object of type ``cls`` from plain data (the inverse of ``to_data``)."""
    hints = typing.get_type_hints(cls, vars(model))
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in data:
            kwargs[field.name] = _convert(hints[field.name], data[field.name])
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**kwargs)


def _convert(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(options[0], data)
    if origin is tuple:
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(_convert(item_hint, item) for item in data)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(data)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_data(hint, data)
    if hint is float and isinstance(data, int):
        return float(data)
    return data

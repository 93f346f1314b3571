"""A fast protobuf-to-JSON-object conversion, equal to ``json_format.MessageToDict``.

The policy input carries the CheckRequest attributes as protojson, and the generic
``MessageToDict`` costs more than the rest of a cached check. This converter walks only
the set fields (``ListFields``) with a per-field converter built once per descriptor.
Well-known types (Timestamp, Struct, Any, ...) go through ``json_format`` itself, so
their special JSON forms stay exact. Equality with ``MessageToDict`` is tested.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

from google.protobuf import (  # type: ignore[import-untyped,unused-ignore]
    descriptor,
    json_format,
)

Converter = Callable[[Any], Any]
_FD = descriptor.FieldDescriptor
_INT64_TYPES = frozenset(
    {_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64}
)
_FLOAT_TYPES = frozenset({_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE})
_converters: dict[Any, Converter] = {}


def message_to_dict(message: Any) -> dict[str, Any]:
    """``json_format.MessageToDict(message)`` for a non-well-known message, faster."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        out[field.json_name] = _converter(field)(value)
    return out


def _converter(field: Any) -> Converter:
    conv = _converters.get(field)
    if conv is None:
        conv = _converters[field] = _build(field)
    return conv


def _build(field: Any) -> Converter:
    if field.type == _FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        key_field = field.message_type.fields_by_name["key"]
        conv = _scalar(value_field)
        if key_field.type == _FD.TYPE_BOOL:
            return lambda m: {("true" if k else "false"): conv(v) for k, v in m.items()}
        return lambda m: {str(k): conv(v) for k, v in m.items()}
    single = _scalar(field)
    if _is_repeated(field):
        return lambda values: [single(v) for v in values]
    return single


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == _FD.LABEL_REPEATED)


def _scalar(field: Any) -> Converter:
    kind = field.type
    if kind == _FD.TYPE_MESSAGE:
        if field.message_type.full_name.startswith("google.protobuf."):
            return json_format.MessageToDict  # type: ignore[no-any-return]
        return message_to_dict
    if kind == _FD.TYPE_ENUM:
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda number: names.get(number, number)
    if kind in _INT64_TYPES:
        return str
    if kind == _FD.TYPE_BYTES:
        return lambda data: base64.b64encode(data).decode("utf-8")
    if kind in _FLOAT_TYPES:
        return _float
    return _identity


def _identity(value: Any) -> Any:
    return value


def _float(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value

"""A fast protobuf-to-JSON-object conversion, equal to ``json_format.MessageToDict``.

The policy input carries the CheckRequest attributes as protojson, and the generic
``MessageToDict`` costs more than the rest of a cached check. This converter walks only
the set fields (``ListFields``) with a per-field plan (JSON name, converter) built once
per field descriptor; fields whose JSON value is the Python value itself (strings,
32-bit integers, bools, ``map<string, string>`` such as the request headers) skip the
converter call. ``google.protobuf.Timestamp`` (``attributes.request.time``, on every
check) has its own formatter that caches the per-second part; other well-known types
(Struct, Any, ...) and out-of-range timestamps go through ``json_format`` itself, so their
JSON forms and errors stay exact. Equality with ``MessageToDict`` is tested.
"""

from __future__ import annotations

import base64
import datetime
import math
from collections.abc import Callable
from typing import Any

from google.protobuf import (  # type: ignore[import-untyped,unused-ignore]
    descriptor,
    json_format,
)

Converter = Callable[[Any], Any]
# (JSON name, converter); None means the Python value already is the JSON value.
Plan = tuple[str, Converter | None]
_FD = descriptor.FieldDescriptor
_INT64_TYPES = frozenset(
    {_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64}
)
_FLOAT_TYPES = frozenset({_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE})
_SCALAR_IDENTITY = frozenset(
    {
        _FD.TYPE_STRING,
        _FD.TYPE_BOOL,
        _FD.TYPE_INT32,
        _FD.TYPE_UINT32,
        _FD.TYPE_SINT32,
        _FD.TYPE_FIXED32,
        _FD.TYPE_SFIXED32,
    }
)
_TIMESTAMP = "google.protobuf.Timestamp"
# RFC 3339 as protobuf accepts it: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799
_EPOCH = datetime.datetime(1970, 1, 1)
# Messages that repeat on every check of a connection (the peers' addresses and
# principals): their JSON objects are cached by serialized bytes. Equal bytes decode to
# equal messages, so a hit is always right; a miss only costs a conversion.
_PER_CONNECTION = frozenset({"envoy.service.auth.v3.AttributeContext.Peer"})
_CACHE_LIMIT = 4096
_plans: dict[Any, Plan] = {}
_by_bytes: dict[bytes, dict[str, Any]] = {}


def message_to_dict(message: Any) -> dict[str, Any]:
    """``json_format.MessageToDict(message)`` for a non-well-known message, faster."""
    out: dict[str, Any] = {}
    plans = _plans
    for field, value in message.ListFields():
        plan = plans.get(field)
        if plan is None:
            plan = plans[field] = (field.json_name, _build(field))
        name, conv = plan
        out[name] = value if conv is None else conv(value)
    return out


def _cached_message_to_dict(message: Any) -> dict[str, Any]:
    """``message_to_dict`` through the per-connection cache.

    The returned object is shared between checks: the policy input is read-only.
    """
    key = message.SerializeToString()
    hit = _by_bytes.get(key)
    if hit is None:
        if len(_by_bytes) >= _CACHE_LIMIT:
            _by_bytes.clear()
        hit = _by_bytes[key] = message_to_dict(message)
    return hit


def _build(field: Any) -> Converter | None:
    if field.type == _FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        key_field = field.message_type.fields_by_name["key"]
        conv = _scalar(value_field)
        if key_field.type == _FD.TYPE_BOOL:
            return lambda m: {("true" if k else "false"): _apply(conv, v) for k, v in m.items()}
        if key_field.type == _FD.TYPE_STRING and conv is None:
            return dict
        return lambda m: {str(k): _apply(conv, v) for k, v in m.items()}
    single = _scalar(field)
    if _is_repeated(field):
        if single is None:
            return list
        return lambda values: [single(v) for v in values]
    return single


def _apply(conv: Converter | None, value: Any) -> Any:
    return value if conv is None else conv(value)


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == _FD.LABEL_REPEATED)


def _scalar(field: Any) -> Converter | None:
    kind = field.type
    if kind == _FD.TYPE_MESSAGE:
        full_name = field.message_type.full_name
        if full_name == _TIMESTAMP:
            return timestamp_to_json
        if full_name in _PER_CONNECTION:
            return _cached_message_to_dict
        if full_name.startswith("google.protobuf."):
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
    if kind in _SCALAR_IDENTITY:
        return None
    return _identity


def _identity(value: Any) -> Any:
    return value


def _float(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


class _SecondsCache:
    """The date-time text of the last second seen: checks in one second share it."""

    seconds: int | None = None
    text: str = ""


def timestamp_to_json(timestamp: Any) -> str:
    """``json_format.MessageToDict`` of a Timestamp (RFC 3339, 0/3/6/9 digits, Z)."""
    seconds, nanos = timestamp.seconds, timestamp.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        # json_format raises its own error for these; keep it identical.
        return json_format.MessageToDict(timestamp)  # type: ignore[no-any-return]
    if seconds != _SecondsCache.seconds:
        _SecondsCache.text = (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat()
        _SecondsCache.seconds = seconds
    text = _SecondsCache.text
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"

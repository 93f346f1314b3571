"""Small constructors shared by the builders: Any packing, durations, typed extensions."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2, extension_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, message, struct_pb2, wrappers_pb2  # type: ignore[import-untyped,unused-ignore]

# The key under which a cluster's typed_extension_protocol_options carries its HTTP protocol
# options (every HTTP/2 upstream: the HBONE originator, the extauthz and collector clusters).
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def pack(msg: message.Message) -> any_pb2.Any:
    """Wrap ``msg`` in an Any (Envoy's ``typed_config``)."""
    wrapped = any_pb2.Any()
    wrapped.Pack(msg)
    return wrapped


def duration(seconds: float) -> duration_pb2.Duration:
    """A Duration from seconds, exact to the millisecond (what Gateway API durations carry)."""
    millis = round(seconds * 1000)
    return duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)


def extension(name: str, msg: message.Message) -> extension_pb2.TypedExtensionConfig:
    return extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(msg))


def struct(data: dict[str, object]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


def boolean(value: bool) -> wrappers_pb2.BoolValue:
    return wrappers_pb2.BoolValue(value=value)


def uint32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def inline(text: str) -> base_pb2.DataSource:
    return base_pb2.DataSource(inline_string=text)


_FIRST_KEYS = ("@type", "name")


def to_dict(msg: message.Message) -> dict[str, Any]:
    """Plain data with proto field names, keys sorted (``@type`` and ``name`` first).

    json_format's own key order follows neither field numbers nor names under upb, and
    Struct keys come out in hash order, so sorting is what makes the output deterministic.
    """
    data: dict[str, Any] = _ordered(
        json_format.MessageToDict(msg, preserving_proto_field_name=True)
    )
    return data


def _ordered(value: Any) -> Any:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (key not in _FIRST_KEYS, _rank(key), key))
        return {key: _ordered(value[key]) for key in keys}
    if isinstance(value, list):
        return [_ordered(item) for item in value]
    return value


def _rank(key: str) -> int:
    return _FIRST_KEYS.index(key) if key in _FIRST_KEYS else 0

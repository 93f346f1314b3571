"""gRPC wire helpers: length-prefixed messages, status mapping and a tiny protobuf codec.

Enough protobuf to carry Istio's ``EchoRequest``/``EchoResponse`` (``string message = 1``)
without generated code.
"""

from __future__ import annotations

import struct

from waypoint.hbone import errors

OK = 0
UNKNOWN = 2
INTERNAL = 13
UNIMPLEMENTED = 12
UNAVAILABLE = 14
UNAUTHENTICATED = 16
PERMISSION_DENIED = 7

# https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
_HTTP_TO_GRPC = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}


def status_for_http(status: int) -> int:
    """The gRPC status a client infers from a non-200 HTTP response."""
    return _HTTP_TO_GRPC.get(status, UNKNOWN)


def frame(message: bytes) -> bytes:
    """One uncompressed length-prefixed gRPC message."""
    return struct.pack(">BI", 0, len(message)) + message


def unframe(data: bytes) -> list[bytes]:
    """Split a gRPC body into its messages."""
    out: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 5:
            raise errors.ProtocolViolation("truncated gRPC message prefix")
        compressed, length = struct.unpack_from(">BI", data, offset)
        if compressed:
            raise errors.ProtocolViolation("compressed gRPC messages are not supported")
        offset += 5
        if len(data) - offset < length:
            raise errors.ProtocolViolation(
                f"truncated gRPC message: {len(data) - offset} of {length} bytes"
            )
        out.append(data[offset : offset + length])
        offset += length
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data):
            raise errors.ProtocolViolation("truncated protobuf varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise errors.ProtocolViolation("protobuf varint too long")


def encode_string_field(field: int, value: str) -> bytes:
    """``string <field> = value`` as protobuf bytes (empty strings are omitted, as proto3 does)."""
    raw = value.encode()
    if not raw:
        return b""
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def decode_string_field(data: bytes, field: int) -> str:
    """The last value of string ``field`` in a protobuf message ("" when absent)."""
    offset, found = 0, b""
    while offset < len(data):
        key, offset = _read_varint(data, offset)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, offset = _read_varint(data, offset)
        elif wire_type == 1:
            offset += 8
        elif wire_type == 5:
            offset += 4
        elif wire_type == 2:
            length, offset = _read_varint(data, offset)
            if number == field:
                found = data[offset : offset + length]
            offset += length
        else:
            raise errors.ProtocolViolation(f"unsupported protobuf wire type {wire_type}")
        if offset > len(data):
            raise errors.ProtocolViolation("truncated protobuf field")
    return found.decode(errors="replace")


def echo_message(message: str) -> bytes:
    """Istio ``EchoRequest``/``EchoResponse`` with ``message`` in field 1."""
    return encode_string_field(1, message)

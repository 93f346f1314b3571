"""gRPC wire helpers: length-prefixed messages and the HTTP-to-gRPC status mapping.

The messages themselves are protobuf: Istio's ``EchoRequest``/``EchoResponse`` are in
``echo_pb2.py`` and ``echo_pb2.pyi`` beside this file, generated from ``echo.proto`` with
grpcio-tools 1.72.0, whose gencode (protobuf 6.30.0) loads on every protobuf this project
allows::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. waypoint/local/hbone/echo.proto
"""

from __future__ import annotations

import struct

from waypoint.local.hbone import errors

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

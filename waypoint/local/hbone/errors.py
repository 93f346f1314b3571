"""Exceptions raised by the HBONE client, terminator and HTTP/2 engine."""

from __future__ import annotations


class HboneError(Exception):
    """Base class for every HBONE failure."""


class HboneConnectionError(HboneError):
    """The outer connection failed: TCP, TLS handshake, peer identity, GOAWAY or close."""


class StreamResetError(HboneError):
    """An HTTP/2 stream was reset (RST_STREAM) before it finished."""

    def __init__(self, stream_id: int, error_code: int, message: str = "") -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        super().__init__(message or f"stream {stream_id} reset with HTTP/2 error code {error_code}")


class TunnelRejected(HboneError):
    """The CONNECT request got a non-200 response."""

    def __init__(
        self, authority: str, status: int, headers: list[tuple[str, str]], body: bytes = b""
    ) -> None:
        self.authority = authority
        self.status = status
        self.headers = headers
        self.body = body
        detail = body[:200].decode(errors="replace").strip()
        super().__init__(
            f"CONNECT {authority} rejected with status {status}" + (f": {detail}" if detail else "")
        )


class ProtocolViolation(HboneError):
    """The peer sent something the HTTP/1.1 or gRPC codec cannot accept."""

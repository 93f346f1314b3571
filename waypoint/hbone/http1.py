"""A small, strict HTTP/1.1 codec for requests inside tunnels and for the echo server.

Bodies are framed by Content-Length or chunked encoding (or end of stream for
responses), so one connection can carry several exchanges.
"""

from __future__ import annotations

import dataclasses
import http
from collections.abc import Iterable

from waypoint.hbone import errors, streams

Headers = list[tuple[str, str]]
DEFAULT_BODY_LIMIT = 64 << 20
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclasses.dataclass(frozen=True)
class Response:
    """An HTTP response: status, headers in wire order, and the whole body."""

    status: int
    headers: Headers
    body: bytes
    reason: str = ""

    def header(self, name: str) -> str | None:
        """First value of ``name`` (case-insensitive), or None."""
        return _first(self.headers, name)

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


@dataclasses.dataclass(frozen=True)
class Request:
    """An HTTP/1.1 request as parsed by a server."""

    method: str
    target: str
    version: str
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


def _first(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


def _check_token(kind: str, value: str) -> None:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"HTTP {kind} {value!r} contains CR, LF or NUL")


def encode_request(
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    host: str,
) -> bytes:
    """Serialize a request; adds Host and Content-Length unless given."""
    if not method.isalpha() or not path or " " in path:
        raise ValueError(f"bad HTTP request line {method!r} {path!r}")
    _check_token("path", path)
    header_list = list(headers)
    names = {k.lower() for k, _ in header_list}
    if "host" not in names:
        header_list.insert(0, ("Host", host))
    if (
        "content-length" not in names
        and "transfer-encoding" not in names
        and (body or method.upper() in {"POST", "PUT", "PATCH"})
    ):
        header_list.append(("Content-Length", str(len(body))))
    return _head(f"{method} {path} HTTP/1.1", header_list) + body


def encode_response(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, *, head_only: bool = False
) -> bytes:
    """Serialize a response with Content-Length (``head_only`` for HEAD requests)."""
    reason = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else ""
    header_list = [*headers, ("Content-Length", str(len(body)))]
    return _head(f"HTTP/1.1 {status} {reason}".rstrip(), header_list) + (b"" if head_only else body)


def _head(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [start_line]
    for name, value in headers:
        _check_token("header name", name)
        _check_token(f"header {name!r} value", value)
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(reader: streams.BufferedReader) -> tuple[str, Headers] | None:
    start = await reader.readline()
    while start in (b"\r\n", b"\n"):  # tolerate stray CRLF between messages (RFC 9112 2.2)
        start = await reader.readline()
    if not start:
        return None
    if not start.endswith(b"\n"):
        raise errors.ProtocolViolation(f"HTTP head truncated: {start[:80]!r}")
    headers: Headers = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise errors.ProtocolViolation("HTTP headers truncated")
        if line in (b"\r\n", b"\n"):
            return start.decode("latin-1").rstrip("\r\n"), headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise errors.ProtocolViolation(f"malformed HTTP header line {line[:80]!r}")
        headers.append((name, value.strip()))


async def _read_body(
    reader: streams.BufferedReader, headers: Headers, *, limit: int, until_eof: bool
) -> bytes:
    if "chunked" in (_first(headers, "transfer-encoding") or "").lower():
        return await _read_chunked(reader, limit)
    length = _first(headers, "content-length")
    if length is not None:
        if not length.isdigit():
            raise errors.ProtocolViolation(f"bad Content-Length {length!r}")
        if int(length) > limit:
            raise errors.ProtocolViolation(f"body of {length} bytes exceeds limit {limit}")
        return await reader.readexactly(int(length))
    return await reader.read_until_eof(limit) if until_eof else b""


async def _read_chunked(reader: streams.BufferedReader, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = (await reader.readline()).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise errors.ProtocolViolation(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers are not surfaced
            return b"".join(parts)
        total += size
        if total > limit:
            raise errors.ProtocolViolation(f"chunked body exceeds limit {limit}")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def read_response(
    reader: streams.BufferedReader, method: str, *, limit: int = DEFAULT_BODY_LIMIT
) -> Response:
    """Read one final response (skipping 1xx) for a request made with ``method``."""
    while True:
        head = await _read_head(reader)
        if head is None:
            raise errors.ProtocolViolation("connection ended before an HTTP response")
        start, headers = head
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise errors.ProtocolViolation(f"bad HTTP status line {start[:80]!r}")
        status = int(code)
        if 100 <= status < 200:
            continue
        if method.upper() == "HEAD" or status in _NO_BODY_STATUSES:
            body = b""
        else:
            body = await _read_body(reader, headers, limit=limit, until_eof=True)
        return Response(status=status, headers=headers, body=body, reason=reason)


async def read_request(
    reader: streams.BufferedReader,
    *,
    limit: int = DEFAULT_BODY_LIMIT,
    send_continue: streams.ByteStream | None = None,
) -> Request | None:
    """Read one request; None when the client closed between requests.

    With ``send_continue``, a request carrying ``Expect: 100-continue`` gets its
    ``100 Continue`` there before the body is read (curl waits for it on big bodies).
    """
    head = await _read_head(reader)
    if head is None:
        return None
    start, headers = head
    parts = start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise errors.ProtocolViolation(f"bad HTTP request line {start[:80]!r}")
    expect = (_first(headers, "expect") or "").lower()
    if send_continue is not None and expect == "100-continue" and parts[2] == "HTTP/1.1":
        send_continue.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await send_continue.drain()
    body = await _read_body(reader, headers, limit=limit, until_eof=False)
    return Request(method=parts[0], target=parts[1], version=parts[2], headers=headers, body=body)


async def exchange(
    stream: streams.ByteStream,
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    host: str,
    *,
    limit: int = DEFAULT_BODY_LIMIT,
) -> Response:
    """Send one request on ``stream`` and read its response."""
    stream.write(encode_request(method, path, headers, body, host))
    await stream.drain()
    return await read_response(streams.BufferedReader(stream), method, limit=limit)

"""A small, strict HTTP/1.1 codec for requests inside tunnels and for the echo server.

Bodies are framed by Content-Length or chunked encoding (or end of stream for
responses), so one connection can carry several exchanges.

Hand-written, not h11: on the keep-alive path the load tests drive (their users' requests
and the echo backends' answers) h11 cost 1.45 times the CPU per request, because it makes
some 270 Python calls for one request and its response; see docs/benchmarks.md, "Library
codecs against hand-written ones". So this codec enforces what h11 would on what a peer sends: a bounded
head (:data:`HEAD_LIMIT`), token header names and control-free values, one unambiguous
framing (a single Content-Length, or ``chunked`` alone), strict chunk lines, and a body limit.
"""

from __future__ import annotations

import dataclasses
import http
import re
from collections.abc import Iterable

from waypoint.local.hbone import errors, streams

Headers = list[tuple[str, str]]
DEFAULT_BODY_LIMIT = 64 << 20
# A received head (request or status line plus headers, or a chunked body's trailers) may not
# exceed this; Envoy's own default limit on request headers is 60 KiB.
HEAD_LIMIT = 64 << 10
_CHUNK_LINE_LIMIT = 4096  # a chunk's size line, extensions included
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
# A token name (RFC 9110 5.6.2), then a value without controls but HTAB; one character class
# each, so matching stays linear in the line's length.
_FIELD_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):([^\x00-\x08\x0a-\x1f\x7f]*)\r?\n")
_TARGET = re.compile(r"[\x21-\x7e\x80-\xff]+")
_VERSION = re.compile(r"HTTP/1\.[01]")
_STATUS = re.compile(r"[1-9][0-9][0-9]")
_LENGTH = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
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


class _Budget:
    """What is left of :data:`HEAD_LIMIT` for one head (or one chunked body's trailers)."""

    def __init__(self) -> None:
        self.left = HEAD_LIMIT

    async def line(self, reader: streams.BufferedReader, what: str) -> bytes:
        """One whole line; end of stream (``b""``) only before its first byte."""
        if self.left <= 0:
            raise errors.ProtocolViolation(f"HTTP {what} exceeds {HEAD_LIMIT} bytes")
        line = await reader.readline(self.left)
        self.left -= len(line)
        if self.left < 0:
            raise errors.ProtocolViolation(f"HTTP {what} exceeds {HEAD_LIMIT} bytes")
        if line and not line.endswith(b"\n"):
            raise errors.ProtocolViolation(f"HTTP {what} truncated: {line[:80]!r}")
        return line


async def _read_head(reader: streams.BufferedReader) -> tuple[str, Headers] | None:
    budget = _Budget()
    start = await budget.line(reader, "head")
    while start in (b"\r\n", b"\n"):  # tolerate stray CRLF between messages (RFC 9112 2.2)
        start = await budget.line(reader, "head")
    if not start:
        return None
    headers = await _read_fields(reader, budget)
    return start.decode("latin-1").rstrip("\r\n"), headers


async def _read_fields(reader: streams.BufferedReader, budget: _Budget) -> Headers:
    """Header (or trailer) lines up to the blank line, each ``token: value``."""
    fields: Headers = []
    while True:
        line = await budget.line(reader, "headers")
        if not line:
            raise errors.ProtocolViolation("HTTP headers truncated")
        if line in (b"\r\n", b"\n"):
            return fields
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            raise errors.ProtocolViolation(f"malformed HTTP header line {line[:80]!r}")
        name, value = match.groups()
        fields.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))


def _framing(headers: Headers) -> tuple[bool, int | None]:
    """(chunked, Content-Length) with one unambiguous framing, as RFC 9112 6.1-6.3 asks.

    Repeated equal lengths count as one; differing ones, a coding other than ``chunked``,
    or both headers at once (how requests are smuggled past a proxy) are refused.
    """
    lengths: set[str] = set()
    codings: list[str] = []
    for key, value in headers:
        lowered = key.lower()
        if lowered == "content-length":
            lengths.update(v.strip() for v in value.split(","))
        elif lowered == "transfer-encoding":
            codings.extend(v.strip().lower() for v in value.split(","))
    if codings:
        if codings != ["chunked"]:
            raise errors.ProtocolViolation(f"unsupported Transfer-Encoding {codings!r}")
        if lengths:
            raise errors.ProtocolViolation("both Transfer-Encoding and Content-Length")
        return True, None
    if not lengths:
        return False, None
    length = lengths.pop()
    if lengths or not _LENGTH.fullmatch(length):
        raise errors.ProtocolViolation(f"bad Content-Length {sorted({length, *lengths})!r}")
    return False, int(length)


async def _read_body(
    reader: streams.BufferedReader, headers: Headers, *, limit: int, until_eof: bool
) -> bytes:
    chunked, length = _framing(headers)
    if chunked:
        return await _read_chunked(reader, limit)
    if length is not None:
        if length > limit:
            raise errors.ProtocolViolation(f"body of {length} bytes exceeds limit {limit}")
        return await reader.readexactly(length)
    return await reader.read_until_eof(limit) if until_eof else b""


async def _read_chunked(reader: streams.BufferedReader, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readline(_CHUNK_LINE_LIMIT)
        size_text = size_line.split(b";", 1)[0].strip(b" \t\r\n")
        if not size_line.endswith(b"\n") or not _CHUNK_SIZE.fullmatch(size_text):
            raise errors.ProtocolViolation(f"bad chunk size line {size_line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            await _read_fields(reader, _Budget())  # trailers are not surfaced
            return b"".join(parts)
        total += size
        if total > limit:
            raise errors.ProtocolViolation(f"chunked body exceeds limit {limit}")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise errors.ProtocolViolation("chunk data not followed by CRLF")


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
        if not _VERSION.fullmatch(version) or not _STATUS.fullmatch(code):
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
    if (
        len(parts) != 3
        or not _TOKEN.fullmatch(parts[0])
        or not _TARGET.fullmatch(parts[1])
        or not _VERSION.fullmatch(parts[2])
    ):
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

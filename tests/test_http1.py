"""HTTP/1.1 inside tunnels (``waypoint.local.hbone.http1``): framing, keep-alive and hostile input.

The codec is hand-written (docs/benchmarks.md says why), so these tests hold it to the
limits a library such as h11 enforces. Each side runs over an in-memory stream pair, so a
test controls every byte.
"""

from __future__ import annotations

import asyncio

import pytest

from waypoint.local.hbone import errors, http1, streams


class _End:
    """One direction's receiving end of an in-memory :class:`~streams.ByteStream` pair."""

    def __init__(self, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._pending = b""
        self._ended = False

    async def read(self, max_bytes: int = streams.READ_SIZE) -> bytes:
        if not self._pending and not self._ended:
            self._pending = await self._inbox.get()
            self._ended = not self._pending
        out, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return out

    def write(self, data: bytes) -> None:
        if data:
            self._outbox.put_nowait(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        self._outbox.put_nowait(b"")

    async def aclose(self) -> None:
        self.write_eof()


def _pair() -> tuple[_End, _End]:
    a: asyncio.Queue[bytes] = asyncio.Queue()
    b: asyncio.Queue[bytes] = asyncio.Queue()
    return _End(a, b), _End(b, a)


async def _received(end: _End) -> bytes:
    """Everything the peer wrote until it half-closed."""
    out = b""
    while chunk := await end.read():
        out += chunk
    return out


async def _response(raw: bytes, method: str = "GET") -> http1.Response:
    """What the client makes of ``raw`` from its peer (who then ends the stream)."""
    mine, theirs = _pair()
    theirs.write(raw)
    theirs.write_eof()
    return await http1.read_response(streams.BufferedReader(mine), method, limit=100)


@pytest.mark.asyncio
async def test_client_keep_alive_adds_host_and_length_and_skips_1xx() -> None:
    mine, theirs = _pair()
    reader = streams.BufferedReader(mine)
    mine.write(http1.encode_request("POST", "/a", [("X-A", "1")], b"body", "h:80"))
    mine.write(http1.encode_request("GET", "/b", [], b"", "h:80"))
    mine.write_eof()
    assert await _received(theirs) == (
        b"POST /a HTTP/1.1\r\nHost: h:80\r\nX-A: 1\r\nContent-Length: 4\r\n\r\nbody"
        b"GET /b HTTP/1.1\r\nHost: h:80\r\n\r\n"
    )
    theirs.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    theirs.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    first = await http1.read_response(reader, "POST")
    assert (first.status, first.reason, first.body, first.header("content-length")) == (
        200,
        "OK",
        b"hi",
        "2",
    )
    second = await http1.read_response(reader, "GET")
    assert (second.status, second.body, second.header("connection")) == (204, b"", "close")


@pytest.mark.asyncio
async def test_client_reads_unframed_chunked_and_head_bodies() -> None:
    assert (await _response(b"HTTP/1.1 200 OK\r\n\r\nuntil eof")).body == b"until eof"
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    )
    assert (await _response(chunked)).body == b"abc"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"
    assert (await _response(head, "HEAD")).body == b""
    same = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
    assert (await _response(same)).body == b"ok"


_CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, "exceeds limit 100"),
        (b"HTTP/1.1 200 OK\r\n" + _CHUNKED + b"65\r\n" + b"x" * 101, "exceeds limit 100"),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 101, "longer than 100"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", "ended after 3 of 5"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1,2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9" + b"9" * 20 + b"\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n" + _CHUNKED, "both"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\n" + _CHUNKED + b"-1\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\n" + _CHUNKED + b"0x3\r\nabc\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\n" + _CHUNKED + b"3\r\nabcXY0\r\n\r\n", "CRLF"),
        (b"HTTP/1.1 200 OK\r\n" + _CHUNKED + b"0\r\n" + b"T: v\r\n" * 20_000, "exceeds"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"v" * http1.HEAD_LIMIT, "longer than"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: v\r\n" * 20_000, "exceeds 65536"),
        (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "malformed"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "status line"),
        (b"SMTP ready\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nX: v\r\n", "truncated"),
        (b"", "ended before"),
    ],
    ids=[
        "length",
        "chunked",
        "eof",
        "short-body",
        "bad-length",
        "two-lengths",
        "length-list",
        "huge-length",
        "te-and-length",
        "gzip",
        "negative-chunk",
        "0x-chunk",
        "chunk-no-crlf",
        "huge-trailers",
        "huge-line",
        "many-headers",
        "nul-in-value",
        "obs-fold",
        "two-digit-status",
        "http2",
        "not-http",
        "head-cut",
        "empty",
    ],
)
@pytest.mark.asyncio
async def test_client_refuses_hostile_responses(raw: bytes, message: str) -> None:
    with pytest.raises(errors.ProtocolViolation, match=message):
        await _response(raw)


def test_client_refuses_to_send_header_injection() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        http1.encode_request("GET", "/", [("X-A", "1\r\nX-Injected: 1")], b"", "h")
    with pytest.raises(ValueError, match="request line"):
        http1.encode_request("GET", "/a b", [], b"", "h")


@pytest.mark.asyncio
async def test_server_keep_alive_head_stray_crlf_and_close() -> None:
    mine, theirs = _pair()
    reader = streams.BufferedReader(mine)
    theirs.write(b"GET /one HTTP/1.1\r\nHost: h\r\nX-Case: Kept\r\n\r\n")
    theirs.write(b"\r\nHEAD /two HTTP/1.1\r\nHost: h\r\n\r\n")  # a stray CRLF first
    theirs.write(b"POST /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
    theirs.write_eof()
    one = await http1.read_request(reader)
    assert one is not None
    assert (one.method, one.target, one.version, one.keep_alive) == (
        "GET",
        "/one",
        "HTTP/1.1",
        True,
    )
    assert one.headers == [("Host", "h"), ("X-Case", "Kept")]
    two = await http1.read_request(reader)
    assert two is not None
    assert two.method == "HEAD"
    three = await http1.read_request(reader)
    assert three is not None
    assert (three.body, three.keep_alive) == (b"x", False)
    assert await http1.read_request(reader) is None
    assert http1.encode_response(200, [], b"two", head_only=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
    )


@pytest.mark.asyncio
async def test_server_sends_100_continue_before_reading_the_body() -> None:
    mine, theirs = _pair()
    theirs.write(
        b"PUT /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    reading = asyncio.create_task(
        http1.read_request(streams.BufferedReader(mine), send_continue=mine)
    )
    assert await theirs.read() == b"HTTP/1.1 100 Continue\r\n\r\n"
    theirs.write(b"ok")
    request = await reading
    assert request is not None
    assert request.body == b"ok"


_POST = b"POST / HTTP/1.1\r\nHost: h\r\n"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * http1.HEAD_LIMIT, "longer than"),
        (b"GET / HTTP/1.1\r\n" + b"X: v\r\n" * 20_000 + b"\r\n", "exceeds 65536"),
        (b"\r\n" * 40_000 + b"GET / HTTP/1.1\r\n\r\n", "exceeds 65536"),
        (_POST + b"Content-Length: 101\r\n\r\n" + b"x" * 101, "exceeds limit 100"),
        (_POST + _CHUNKED + b"65\r\n" + b"x" * 101, "exceeds limit 100"),
        (_POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", "Content-Length"),
        (_POST + b"Content-Length: -1\r\n\r\n", "Content-Length"),
        (_POST + b"Content-Length: 2\r\n" + _CHUNKED + b"0\r\n\r\n", "both"),
        (_POST + b"Transfer-Encoding: chunked, identity\r\n\r\n", "Transfer-Encoding"),
        (_POST + _CHUNKED + b"1" * 5000 + b"\r\n", "chunk size"),
        (b"GET / HTTP/1.1\r\nBad Header: v\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\nX : v\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\nX: a\x1bb\r\n\r\n", "malformed"),
        (b"GET /\r\n\r\n", "request line"),
        (b"GET / HTTP/1.2\r\n\r\n", "request line"),
        (b"G(T / HTTP/1.1\r\n\r\n", "request line"),
        (b"GET /a\x7fb HTTP/1.1\r\n\r\n", "request line"),
        (_POST + b"Content-Length: 3\r\n\r\nab", "ended after 2 of 3"),
        (b"GET / HTTP/1.1\r\nHost: h\r\n", "truncated"),
    ],
    ids=[
        "huge-line",
        "many-headers",
        "many-crlf",
        "length",
        "chunked",
        "two-lengths",
        "negative-length",
        "te-and-length",
        "te-identity",
        "huge-chunk-line",
        "space-in-name",
        "space-before-colon",
        "control-in-value",
        "http09",
        "http12",
        "bad-method",
        "del-in-target",
        "short-body",
        "head-cut",
    ],
)
@pytest.mark.asyncio
async def test_server_refuses_hostile_requests(raw: bytes, message: str) -> None:
    mine, theirs = _pair()
    theirs.write(raw)
    theirs.write_eof()
    with pytest.raises(errors.ProtocolViolation, match=message):
        await http1.read_request(streams.BufferedReader(mine), limit=100)

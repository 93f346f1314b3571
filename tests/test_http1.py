"""HTTP/1.1 inside tunnels (``waypoint.hbone.http1``): framing, keep-alive and hostile input.

Client and server run over an in-memory stream pair, so each test controls every byte.
"""

from __future__ import annotations

import asyncio

import pytest

from waypoint.hbone import errors, http1, streams


class _End:
    """One direction's receiving end of an in-memory :class:`~streams.ByteStream` pair."""

    def __init__(self, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._ended = False

    async def read(self, max_bytes: int = streams.READ_SIZE) -> bytes:
        if self._ended:
            return b""
        chunk = await self._inbox.get()
        self._ended = not chunk
        return chunk[:max_bytes]

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


async def _answer(raw: bytes) -> tuple[http1.ClientConnection, _End]:
    """A client whose peer sends ``raw`` (then ends the stream)."""
    mine, theirs = _pair()
    theirs.write(raw)
    theirs.write_eof()
    return http1.ClientConnection(mine, limit=100), theirs


@pytest.mark.asyncio
async def test_client_keep_alive_adds_host_and_length_and_skips_1xx() -> None:
    mine, theirs = _pair()
    conn = http1.ClientConnection(mine)
    theirs.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    first = await conn.exchange("POST", "/a", [("X-A", "1")], b"body", "h:80")
    assert (first.status, first.reason, first.body, first.header("content-length")) == (
        200,
        "OK",
        b"hi",
        "2",
    )
    theirs.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    second = await conn.exchange("GET", "/b", [], b"", "h:80")
    assert (second.status, second.body) == (204, b"")
    mine.write_eof()
    sent = await _received(theirs)
    assert sent == (
        b"POST /a HTTP/1.1\r\nHost: h:80\r\nX-A: 1\r\nContent-Length: 4\r\n\r\nbody"
        b"GET /b HTTP/1.1\r\nHost: h:80\r\n\r\n"
    )
    with pytest.raises(errors.ProtocolViolation, match="cannot carry another"):
        await conn.exchange("GET", "/c", [], b"", "h:80")


@pytest.mark.asyncio
async def test_client_reads_an_unframed_body_to_the_end_and_chunked_bodies() -> None:
    conn, _ = await _answer(b"HTTP/1.1 200 OK\r\n\r\nuntil eof")
    assert (await conn.exchange("GET", "/", [], b"", "h")).body == b"until eof"
    conn, _ = await _answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert (await conn.exchange("GET", "/", [], b"", "h")).body == b"abc"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, "exceeds limit 100"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + b"x" * 101, "limit"),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 101, "exceeds limit 100"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", "bad HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad HTTP"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"v" * http1.HEAD_LIMIT, "bad HTTP"),
        (b"SMTP ready\r\n\r\n", "bad HTTP"),
        (b"", "bad HTTP"),
    ],
    ids=["length", "chunked", "eof", "truncated", "bad-length", "huge-head", "not-http", "empty"],
)
@pytest.mark.asyncio
async def test_client_refuses_hostile_responses(raw: bytes, message: str) -> None:
    conn, _ = await _answer(raw)
    with pytest.raises(errors.ProtocolViolation, match=message):
        await conn.exchange("GET", "/", [], b"", "h")


@pytest.mark.asyncio
async def test_client_refuses_to_send_header_injection() -> None:
    conn, _ = await _answer(b"")
    with pytest.raises(ValueError, match="cannot send"):
        await conn.exchange("GET", "/", [("X-A", "1\r\nX-Injected: 1")], b"", "h")
    with pytest.raises(ValueError, match="cannot send"):
        await conn.exchange("GET", "/a b", [], b"", "h")


@pytest.mark.asyncio
async def test_server_keep_alive_head_stray_crlf_and_close() -> None:
    mine, theirs = _pair()
    server = http1.ServerConnection(mine)
    theirs.write(b"GET /one HTTP/1.1\r\nHost: h\r\nX-Case: Kept\r\n\r\n")
    request = await server.read_request()
    assert request is not None
    assert (request.method, request.target, request.version) == ("GET", "/one", "HTTP/1.1")
    assert request.headers == [("Host", "h"), ("X-Case", "Kept")]
    assert await server.respond(200, [("Content-Type", "text/plain")], b"one")
    theirs.write(b"\r\nHEAD /two HTTP/1.1\r\nHost: h\r\n\r\n")  # a stray CRLF first
    request = await server.read_request()
    assert request is not None
    assert request.method == "HEAD"
    assert await server.respond(200, [], b"two")
    theirs.write(
        b"POST /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
    )
    request = await server.read_request()
    assert request is not None
    assert request.body == b"x"
    assert not await server.respond(200, [], b"3")
    mine.write_eof()
    assert await _received(theirs) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\none"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n3"
    )


@pytest.mark.asyncio
async def test_server_sees_a_close_between_requests() -> None:
    mine, theirs = _pair()
    theirs.write_eof()
    assert await http1.ServerConnection(mine).read_request() is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * http1.HEAD_LIMIT, "bad HTTP"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, "limit 100"),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + b"x" * 101,
            "limit 100",
        ),
        (b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: v\r\n\r\n", "bad HTTP"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "bad"),
        (b"GET /\r\n\r\n", "bad HTTP"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nab", "bad HTTP"),
    ],
    ids=["huge-head", "length", "chunked", "bad-name", "two-lengths", "http09", "truncated"],
)
@pytest.mark.asyncio
async def test_server_answers_hostile_requests_with_400_and_closes(
    raw: bytes, message: str
) -> None:
    mine, theirs = _pair()
    server = http1.ServerConnection(mine, limit=100)
    theirs.write(raw)
    theirs.write_eof()
    with pytest.raises(errors.ProtocolViolation, match=message):
        await server.read_request()
    assert not await server.respond(400, [], b"no\n")
    mine.write_eof()
    answer = await _received(theirs)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"Content-Length: 3\r\n\r\nno\n")

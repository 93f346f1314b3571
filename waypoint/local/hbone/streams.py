"""Byte streams: one small interface over TCP/TLS sockets and HTTP/2 tunnels.

The HTTP/2 engine, the HTTP/1.1 codec and the echo servers all speak to a
:class:`ByteStream`, so an h2c connection can run inside a CONNECT tunnel exactly as it
runs on a socket. ``write`` is synchronous and buffers (like ``asyncio.StreamWriter``);
``drain`` applies backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from waypoint.local.hbone import errors

READ_SIZE = 65536


class ByteStream(Protocol):
    """A bidirectional byte stream with half-close."""

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream."""
        ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...

    async def aclose(self) -> None: ...


class SocketStream:
    """A :class:`ByteStream` over an asyncio reader/writer pair.

    Writes made in one event-loop turn are coalesced into one ``transport.write`` (one
    TLS record, one syscall): an HTTP/2 peer emits many small frames per turn, and a
    send per frame dominated CPU time in load tests.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._outbox: list[bytes] = []
        self._flush_scheduled = False

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        return await self.reader.read(max_bytes)

    def write(self, data: bytes) -> None:
        if self.writer.is_closing() or not data:
            return
        self._outbox.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Hand everything buffered to the transport now."""
        self._flush_scheduled = False
        if self._outbox and not self.writer.is_closing():
            self.writer.write(b"".join(self._outbox))
        self._outbox.clear()

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()

    def write_eof(self) -> None:
        self.flush()
        # TLS transports cannot half-close; the peer learns of the end from the protocol.
        if not self.writer.is_closing() and self.writer.can_write_eof():
            self.writer.write_eof()

    async def aclose(self) -> None:
        self.flush()
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5.0)


class PrefixedStream:
    """Replay bytes already consumed (e.g. while sniffing a protocol) before the rest."""

    def __init__(self, prefix: bytes, inner: ByteStream) -> None:
        self._prefix = prefix
        self._inner = inner

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return out
        return await self._inner.read(max_bytes)

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    async def drain(self) -> None:
        await self._inner.drain()

    def write_eof(self) -> None:
        self._inner.write_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class BufferedReader:
    """Line and exact-size reads on top of a :class:`ByteStream`."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._eof = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = await self.stream.read(READ_SIZE)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    async def readline(self, limit: int = 65536) -> bytes:
        """One line including ``\\n``; shorter only at end of stream."""
        start = 0
        while True:
            index = self._buffer.find(b"\n", start)
            if index >= 0:
                return self._take(index + 1)
            if len(self._buffer) > limit:
                raise errors.ProtocolViolation(f"line longer than {limit} bytes")
            start = len(self._buffer)
            if not await self._fill():
                return self._take(len(self._buffer))

    async def peekline(self, limit: int = 65536) -> bytes:
        """Like :meth:`readline` but leaves the line buffered."""
        line = await self.readline(limit)
        self._buffer[:0] = line
        return line

    def take_buffer(self) -> bytes:
        """Hand over whatever is buffered (e.g. to a different protocol's parser)."""
        return self._take(len(self._buffer))

    async def readexactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not await self._fill():
                raise errors.ProtocolViolation(
                    f"stream ended after {len(self._buffer)} of {size} expected bytes"
                )
        return self._take(size)

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        if not self._buffer:
            await self._fill()
        return self._take(min(max_bytes, len(self._buffer)))

    async def read_until_eof(self, limit: int | None = None) -> bytes:
        while True:
            # Checked before each read too: what is already buffered counts.
            if limit is not None and len(self._buffer) > limit:
                raise errors.ProtocolViolation(f"body longer than {limit} bytes")
            if not await self._fill():
                return self._take(len(self._buffer))

    def _take(self, size: int) -> bytes:
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

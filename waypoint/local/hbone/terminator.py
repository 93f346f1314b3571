"""HBONE terminator: the destination side of a tunnel, as ztunnel's inbound is.

It accepts mTLS HTTP/2 connections, checks the peer's SPIFFE trust domain, answers each
``CONNECT host:port`` with 200 once a TCP connection to the target is up (503 if it
cannot be reached), then pipes bytes both ways with half-close. Every tunnel is recorded
with the peer identity so tests can assert who called.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import Mapping

import h2.errors

from waypoint import names, pki
from waypoint.local.hbone import errors, h2io, loop, streams

Headers = list[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class TunnelRecord:
    """One CONNECT the terminator answered."""

    peer_id: str
    authority: str
    target: tuple[str, int] | None
    status: int
    headers: Headers


def parse_authority(authority: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too) into a dialable pair."""
    host, sep, port = authority.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad CONNECT authority {authority!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class HboneTerminator(loop.BackgroundService):
    """Terminate HBONE on ``listen`` and forward each tunnel to its authority over TCP."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        *,
        allowed_trust_domain: str | None = None,
        target_override: Mapping[str, tuple[str, int]] | None = None,
        connect_timeout: float = 5.0,
        max_concurrent_streams: int | None = 1000,
        stream_window: int = h2io.DEFAULT_STREAM_WINDOW,
        connection_window: int = h2io.DEFAULT_CONNECTION_WINDOW,
    ) -> None:
        self.stream_window = stream_window
        self.connection_window = connection_window
        if ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError(
                "HboneTerminator needs an ssl_context that requires client certificates"
            )
        self.ssl_context = ssl_context
        self.listen = listen
        self.allowed_trust_domain = allowed_trust_domain
        self.target_override = dict(target_override or {})
        self.connect_timeout = connect_timeout
        self.max_concurrent_streams = max_concurrent_streams
        self.records: list[TunnelRecord] = []
        self.rejected_peers: list[str] = []
        self._server: asyncio.Server | None = None
        self._connections: set[h2io.H2Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def peers(self) -> list[str]:
        """The peer SPIFFE ID of every tunnel answered with 200, in order."""
        return [r.peer_id for r in self.records if r.status == 200]

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); valid after :meth:`start`."""
        if self._server is None:
            raise RuntimeError("HboneTerminator is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> HboneTerminator:
        host, port = self.listen
        self._server = await asyncio.start_server(
            self._on_client, host, port, ssl=self.ssl_context, ssl_handshake_timeout=10.0
        )
        return self

    async def stop(self) -> None:
        """Stop listening, GOAWAY every connection, end every pipe."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            await conn.aclose()
        if self._handlers:
            # Handlers return once their connection closed; cancelling a start_server
            # callback instead makes asyncio log a spurious error.
            _done, pending = await asyncio.wait(set(self._handlers), timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve_connection(streams.SocketStream(reader, writer), writer)
        finally:
            self._handlers.discard(task)

    async def _serve_connection(
        self, io: streams.SocketStream, writer: asyncio.StreamWriter
    ) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        peer, problem = self._authenticate(ssl_object)

        async def handle(stream: h2io.Stream) -> None:
            await self._on_connect(peer, stream)

        conn = h2io.H2Connection(
            io,
            client_side=False,
            on_request=handle,
            max_concurrent_streams=self.max_concurrent_streams,
            stream_window=self.stream_window,
            connection_window=self.connection_window,
            name=f"HBONE from {peer or 'unknown peer'}",
        )
        self._connections.add(conn)
        try:
            await conn.start()
            if problem:
                # SETTINGS then GOAWAY in one write: the client learns why, then we close.
                self.rejected_peers.append(peer)
                await conn.aclose(h2.errors.ErrorCodes.INADEQUATE_SECURITY, problem)
                return
            await conn.wait_closed()
        finally:
            self._connections.discard(conn)
            await conn.aclose()

    def _authenticate(self, ssl_object: ssl.SSLObject | None) -> tuple[str, str]:
        """Return (peer SPIFFE ID, reason to refuse or "")."""
        if ssl_object is None:
            return "", "not a TLS connection"
        if ssl_object.selected_alpn_protocol() != "h2":
            return "", "ALPN h2 is required"
        try:
            peer = pki.peer_spiffe_id(ssl_object)
        except pki.VerificationError as exc:
            return "", str(exc)
        if self.allowed_trust_domain is not None:
            domain = names.trust_domain_of(peer)
            if domain != self.allowed_trust_domain:
                return peer, f"peer {peer} is outside trust domain {self.allowed_trust_domain}"
        return peer, ""

    def _record(
        self,
        peer: str,
        stream: h2io.Stream,
        authority: str,
        target: tuple[str, int] | None,
        status: int,
    ) -> None:
        self.records.append(
            TunnelRecord(peer, authority, target, status, list(stream.request_headers))
        )

    async def _on_connect(self, peer: str, stream: h2io.Stream) -> None:
        method = h2io.header(stream.request_headers, ":method") or ""
        authority = h2io.header(stream.request_headers, ":authority") or ""
        if method != "CONNECT":
            self._record(peer, stream, authority, None, 405)
            stream.send_headers([(":status", "405")], end_stream=True)
            return
        try:
            target = self.target_override.get(authority) or parse_authority(authority)
        except ValueError:
            self._record(peer, stream, authority, None, 400)
            stream.send_headers([(":status", "400")], end_stream=True)
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*target), self.connect_timeout
            )
        except (OSError, TimeoutError):
            self._record(peer, stream, authority, target, 503)
            stream.send_headers([(":status", "503")], end_stream=True)
            return
        try:
            stream.send_headers([(":status", "200")])
        except errors.HboneError:
            writer.close()  # the caller gave up while we were dialing
            raise
        self._record(peer, stream, authority, target, 200)
        await pipe(stream, streams.SocketStream(reader, writer))


async def pipe(left: streams.ByteStream, right: streams.ByteStream) -> None:
    """Copy bytes both ways with half-close until both directions end; then close both."""

    async def copy(src: streams.ByteStream, dst: streams.ByteStream) -> None:
        while chunk := await src.read(streams.READ_SIZE):
            dst.write(chunk)
            await dst.drain()
        dst.write_eof()
        await dst.drain()

    tasks = [asyncio.create_task(copy(left, right)), asyncio.create_task(copy(right, left))]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a reset or closed peer just ends the pipe
    finally:
        for task in tasks:
            task.cancel()
        for side in (right, left):
            with contextlib.suppress(OSError, errors.HboneError):
                await side.aclose()

"""HBONE client: CONNECT tunnels over one shared mTLS HTTP/2 connection.

``HboneClient`` is the asyncio API; ``SyncHboneClient`` wraps it for threads (load-test
users, sync tests) by running it on a :class:`~waypoint.local.hbone.loop.LoopThread`. Like
ztunnel, each tunnel is one CONNECT stream; many tunnels share one outer connection,
which is re-established on the next call after it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Coroutine, Iterable
from typing import Any, NamedTuple

from cryptography import x509

from waypoint import names, pki
from waypoint.local.hbone import errors, grpcwire, h2io, http1, loop, streams

Headers = list[tuple[str, str]]
Response = http1.Response
Tunnel = h2io.Stream

DEFAULT_TIMEOUT = 30.0


class GrpcResult(NamedTuple):
    """A unary gRPC outcome; unpacks as ``(status, message, trailers)``."""

    status: int
    message: bytes
    trailers: Headers

    @property
    def details(self) -> str:
        return h2io.header(self.trailers, "grpc-message") or ""


class HboneClient:
    """Open CONNECT tunnels to ``address`` over mutual TLS (TLS 1.3, ALPN h2)."""

    def __init__(
        self,
        address: tuple[str, int],
        ssl_context: ssl.SSLContext,
        *,
        server_name: str | None = None,
        expected_server_id: str | None = None,
        expected_trust_domain: str | None = None,
        connect_timeout: float = 10.0,
        stream_window: int = h2io.DEFAULT_STREAM_WINDOW,
        connection_window: int = h2io.DEFAULT_CONNECTION_WINDOW,
    ) -> None:
        self.address = address
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.expected_server_id = expected_server_id
        self.expected_trust_domain = expected_trust_domain
        self.connect_timeout = connect_timeout
        self.peer_id: str | None = None
        # The certificate the server presented on the latest connection (serial, validity).
        self.peer_certificate: x509.Certificate | None = None
        self.connections_made = 0
        self._conn: h2io.H2Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._closers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HboneClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def connect(self) -> h2io.H2Connection:
        """The live outer connection, dialing a new one if needed."""
        if self._conn is not None and self._conn.usable:
            return self._conn
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._conn is None or not self._conn.usable:
                old, self._conn = self._conn, None
                if old is not None:
                    await old.aclose()
                self._conn = await self._dial()
        return self._conn

    async def _dial(self) -> h2io.H2Connection:
        host, port = self.address
        where = f"HBONE {host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=self.ssl_context, server_hostname=self.server_name or ""
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise errors.HboneConnectionError(
                f"{where}: connect/TLS handshake failed: {exc!r}"
            ) from exc
        io = streams.SocketStream(reader, writer)
        try:
            self.peer_id = self._check_peer(writer, where)
        except errors.HboneError:
            await io.aclose()
            raise
        conn = h2io.H2Connection(
            io,
            client_side=True,
            name=where,
            stream_window=self.stream_window,
            connection_window=self.connection_window,
        )
        await conn.start()
        try:
            await conn.wait_remote_settings(self.connect_timeout)
        except errors.HboneError:
            await conn.aclose()
            raise
        self.connections_made += 1
        return conn

    def _check_peer(self, writer: asyncio.StreamWriter, where: str) -> str:
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None:
            raise errors.HboneConnectionError(f"{where}: not a TLS connection")
        if ssl_object.selected_alpn_protocol() != "h2":
            raise errors.HboneConnectionError(
                f"{where}: server did not negotiate ALPN h2 (got {ssl_object.selected_alpn_protocol()!r})"
            )
        try:
            peer = pki.peer_spiffe_id(ssl_object)
        except pki.VerificationError as exc:
            raise errors.HboneConnectionError(
                f"{where}: {exc} (did the server reject our TLS client certificate?)"
            ) from exc
        der = ssl_object.getpeercert(binary_form=True)
        self.peer_certificate = x509.load_der_x509_certificate(der) if der else None
        if self.expected_server_id is not None and peer != self.expected_server_id:
            raise errors.HboneConnectionError(
                f"{where}: server identity {peer!r} is not the expected {self.expected_server_id!r}"
            )
        if (
            self.expected_trust_domain is not None
            and names.trust_domain_of(peer) != self.expected_trust_domain
        ):
            raise errors.HboneConnectionError(
                f"{where}: server identity {peer!r} is outside trust domain {self.expected_trust_domain!r}"
            )
        return peer

    async def open_tunnel(self, authority: str, headers: Iterable[tuple[str, str]] = ()) -> Tunnel:
        """CONNECT to ``authority`` ("host:port"); return the tunnel once 200 arrives.

        Raises :class:`~waypoint.local.hbone.errors.TunnelRejected` (with ``.status``) otherwise.
        """
        if not authority or any(c in authority for c in " /\r\n"):
            raise ValueError(f"bad CONNECT authority {authority!r}: expected host:port")
        conn = await self.connect()
        stream = await conn.open_stream(
            [(":method", "CONNECT"), (":authority", authority), *headers]
        )
        try:
            response = await stream.response_headers()
        except BaseException:
            stream.reset()  # cancelled or failed: never leave the stream half-open
            raise
        status = int(h2io.header(response, ":status") or 0)
        if status != 200:
            body = b""
            with contextlib.suppress(errors.HboneError):
                body = await asyncio.wait_for(stream.read_all(limit=65536), 2.0)
            await stream.aclose()
            raise errors.TunnelRejected(authority, status, response, body)
        return stream

    async def request(
        self,
        authority: str,
        method: str = "GET",
        path: str = "/",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        host: str | None = None,
        *,
        connect_headers: Iterable[tuple[str, str]] = (),
        timeout: float | None = DEFAULT_TIMEOUT,
        body_limit: int = http1.DEFAULT_BODY_LIMIT,
    ) -> Response:
        """One HTTP/1.1 exchange inside a fresh tunnel (Host defaults to ``authority``)."""
        async with asyncio.timeout(timeout):
            tunnel = await self.open_tunnel(authority, connect_headers)
            try:
                response = await http1.exchange(
                    tunnel, method, path, headers, body, host or authority, limit=body_limit
                )
            except BaseException:
                tunnel.reset()
                raise
        self._close_later(tunnel.aclose())
        return response

    async def grpc_unary(
        self,
        authority: str,
        path: str,
        request: bytes,
        metadata: Iterable[tuple[str, str]] = (),
        *,
        connect_headers: Iterable[tuple[str, str]] = (),
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> GrpcResult:
        """One unary gRPC call spoken as h2c (prior knowledge) inside a fresh tunnel."""
        if not path.startswith("/") or path.count("/") != 2:
            raise ValueError(f"bad gRPC method path {path!r}: expected /package.Service/Method")
        async with asyncio.timeout(timeout):
            tunnel = await self.open_tunnel(authority, connect_headers)
            inner = h2io.H2Connection(tunnel, client_side=True, name=f"h2c {authority}")
            await inner.start()
            try:
                result = await _grpc_call(inner, authority, path, request, metadata)
            except BaseException:
                tunnel.reset()
                await inner.aclose()
                raise
        self._close_later(inner.aclose())
        return result

    def _close_later(self, closing: Coroutine[Any, Any, None]) -> None:
        """Tear a finished tunnel down off the caller's latency path."""
        task = asyncio.create_task(closing)
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def aclose(self) -> None:
        """GOAWAY and close the outer connection."""
        if self._closers:
            await asyncio.wait(set(self._closers), timeout=5.0)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()


async def _grpc_call(
    conn: h2io.H2Connection,
    authority: str,
    path: str,
    request: bytes,
    metadata: Iterable[tuple[str, str]],
) -> GrpcResult:
    stream = await conn.open_stream(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
    )
    stream.write(grpcwire.frame(request))
    stream.write_eof()
    await stream.drain()
    headers = await stream.response_headers()
    body = await stream.read_all()
    trailers = stream.trailers if stream.trailers is not None else headers
    http_status = int(h2io.header(headers, ":status") or 0)
    if http_status != 200:
        return GrpcResult(grpcwire.status_for_http(http_status), b"", trailers)
    raw_status = h2io.header(trailers, "grpc-status")
    if raw_status is None or not raw_status.isdigit():
        raise errors.ProtocolViolation(
            f"gRPC {path}: response without a valid grpc-status ({raw_status!r})"
        )
    messages = grpcwire.unframe(body)
    if len(messages) > 1:
        raise errors.ProtocolViolation(f"gRPC {path}: unary call got {len(messages)} messages")
    return GrpcResult(int(raw_status), messages[0] if messages else b"", trailers)


class SyncTunnel:
    """Blocking view of a :class:`Tunnel`, driven on the client's loop thread."""

    def __init__(self, tunnel: Tunnel, runner: loop.LoopThread, timeout: float | None) -> None:
        self.tunnel = tunnel
        self._runner = runner
        self._timeout = timeout

    def send(self, data: bytes) -> None:
        self._runner.run(_write_and_drain(self.tunnel, data), self._timeout)

    def recv(self, max_bytes: int = streams.READ_SIZE) -> bytes:
        return self._runner.run(self.tunnel.read(max_bytes), self._timeout)

    def recv_exactly(self, size: int) -> bytes:
        return self._runner.run(self.tunnel.readexactly(size), self._timeout)

    def recv_all(self, limit: int | None = None) -> bytes:
        return self._runner.run(self.tunnel.read_all(limit), self._timeout)

    def shutdown_write(self) -> None:
        self._runner.run(_write_eof(self.tunnel), self._timeout)

    def close(self) -> None:
        self._runner.run(self.tunnel.aclose(), self._timeout)

    def __enter__(self) -> SyncTunnel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


async def _write_and_drain(tunnel: Tunnel, data: bytes) -> None:
    tunnel.write(data)
    await tunnel.drain()


async def _write_eof(tunnel: Tunnel) -> None:
    tunnel.write_eof()
    await tunnel.drain()


class SyncHboneClient:
    """Blocking HBONE client usable from any plain thread.

    The asyncio client runs on ``runner`` (default: the process-wide
    :func:`waypoint.local.hbone.loop.shared` loop), so many sync clients cost no extra threads.
    """

    def __init__(
        self,
        address: tuple[str, int],
        ssl_context: ssl.SSLContext,
        *,
        runner: loop.LoopThread | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        server_name: str | None = None,
        expected_server_id: str | None = None,
        expected_trust_domain: str | None = None,
        connect_timeout: float = 10.0,
        stream_window: int = h2io.DEFAULT_STREAM_WINDOW,
        connection_window: int = h2io.DEFAULT_CONNECTION_WINDOW,
    ) -> None:
        self.runner = runner or loop.shared()
        self.timeout = timeout
        self.client = HboneClient(
            address,
            ssl_context,
            server_name=server_name,
            expected_server_id=expected_server_id,
            expected_trust_domain=expected_trust_domain,
            connect_timeout=connect_timeout,
            stream_window=stream_window,
            connection_window=connection_window,
        )

    def _call_timeout(self) -> float | None:
        return None if self.timeout is None else self.timeout + 5.0

    def connect(self) -> None:
        self.runner.run(self.client.connect(), self._call_timeout())

    def open_tunnel(self, authority: str, headers: Iterable[tuple[str, str]] = ()) -> SyncTunnel:
        tunnel = self.runner.run(
            self.client.open_tunnel(authority, list(headers)), self._call_timeout()
        )
        return SyncTunnel(tunnel, self.runner, self._call_timeout())

    def request(
        self,
        authority: str,
        method: str = "GET",
        path: str = "/",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        host: str | None = None,
        *,
        connect_headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        coro = self.client.request(
            authority,
            method,
            path,
            list(headers),
            body,
            host,
            connect_headers=list(connect_headers),
            timeout=self.timeout,
        )
        return self.runner.run(coro, self._call_timeout())

    def grpc_unary(
        self,
        authority: str,
        path: str,
        request: bytes,
        metadata: Iterable[tuple[str, str]] = (),
        *,
        connect_headers: Iterable[tuple[str, str]] = (),
    ) -> GrpcResult:
        coro = self.client.grpc_unary(
            authority,
            path,
            request,
            list(metadata),
            connect_headers=list(connect_headers),
            timeout=self.timeout,
        )
        return self.runner.run(coro, self._call_timeout())

    @property
    def peer_id(self) -> str | None:
        return self.client.peer_id

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        return self.client.peer_certificate

    def close(self) -> None:
        if self.runner.running:
            self.runner.run(self.client.aclose(), 10.0)

    def __enter__(self) -> SyncHboneClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

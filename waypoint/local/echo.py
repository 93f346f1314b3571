"""Echo backend in the style of Istio's echo app, for conformance, load and e2e tests.

One :class:`EchoServer` serves several ports on one bind address: HTTP/1.1 (plus h2c
with prior knowledge on the same port), gRPC (any method echoes; Istio's
``proto.EchoTestService/Echo`` shape) and raw TCP echo. Responses are Istio echo text
(``Key=value`` lines) or JSON, and :func:`parse_echo` inverts both, so a test can tell
which backend answered and what headers it saw.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import grpc

from waypoint.local.hbone import echo_pb2, errors, h2io, http1, loop, streams

Headers = list[tuple[str, str]]
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class EchoReport:
    """What an echo backend saw, parsed from its response."""

    hostname: str
    namespace: str
    method: str
    url: str
    host: str
    headers: dict[str, list[str]]
    service_version: str = ""
    service_port: str = ""
    proto: str = ""
    ip: str = ""
    message: str = ""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@dataclasses.dataclass(frozen=True)
class _Seen:
    port: int
    host: str
    url: str
    method: str
    proto: str
    ip: str
    headers: Headers
    message: str | None = None


def _fields(server: EchoServer, seen: _Seen) -> list[tuple[str, str]]:
    out = [
        ("ServiceVersion", server.version),
        ("ServicePort", str(seen.port)),
        ("Host", seen.host),
        ("URL", seen.url),
        ("Method", seen.method),
        ("Proto", seen.proto),
        ("IP", seen.ip),
    ]
    out += [("RequestHeader", f"{name}:{value}") for name, value in seen.headers]
    if seen.message is not None:
        out.append(("Echo", seen.message))
    out += [("Hostname", server.name), ("Namespace", server.namespace)]
    return out


def format_text(fields: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{key}={value.replace(chr(10), ' ')}\n" for key, value in fields)


def format_json(fields: Iterable[tuple[str, str]]) -> str:
    doc: dict[str, object] = {}
    headers: dict[str, list[str]] = {}
    for key, value in fields:
        if key == "RequestHeader":
            name, _, val = value.partition(":")
            headers.setdefault(name, []).append(val)
        else:
            doc[key] = value
    doc["RequestHeaders"] = headers
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def parse_echo(text: str | bytes) -> EchoReport:
    """Invert the echo text or JSON body into an :class:`EchoReport`."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if text.lstrip().startswith("{"):
        return _parse_json(text)
    values: dict[str, str] = {}
    headers: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "RequestHeader":
            name, _, val = value.partition(":")
            headers.setdefault(name.lower(), []).append(val)
        else:
            values.setdefault(key, value)
    return _report(values, headers, text)


def _parse_json(text: str) -> EchoReport:
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError(f"echo JSON is not an object: {text[:80]!r}")
    raw_headers = doc.get("RequestHeaders") or {}
    headers: dict[str, list[str]] = {}
    for name, vals in raw_headers.items():
        headers.setdefault(str(name).lower(), []).extend(str(v) for v in vals)
    values = {str(k): str(v) for k, v in doc.items() if k != "RequestHeaders"}
    return _report(values, headers, text)


def _report(values: dict[str, str], headers: dict[str, list[str]], text: str) -> EchoReport:
    if "Hostname" not in values:
        raise ValueError(f"not an echo response (no Hostname): {text[:120]!r}")
    return EchoReport(
        hostname=values["Hostname"],
        namespace=values.get("Namespace", ""),
        method=values.get("Method", ""),
        url=values.get("URL", ""),
        host=values.get("Host", ""),
        headers=headers,
        service_version=values.get("ServiceVersion", ""),
        service_port=values.get("ServicePort", ""),
        proto=values.get("Proto", ""),
        ip=values.get("IP", ""),
        message=values.get("Echo", ""),
    )


def _wants_json(target: str, headers: Headers) -> bool:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    if "json" in query.get("format", []):
        return True
    accept = h2io.header(headers, "accept") or ""
    return "application/json" in accept


def _render(server: EchoServer, seen: _Seen) -> tuple[bytes, str]:
    fields = _fields(server, seen)
    if _wants_json(seen.url, seen.headers):
        return format_json(fields).encode(), "application/json"
    return format_text(fields).encode(), "text/plain"


class EchoServer(loop.BackgroundService):
    """An echo workload named ``name`` in ``namespace``, listening on ``bind``.

    Port 0 picks a free port; after :meth:`start` the ``*_ports`` attributes hold the
    real ones.
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        bind: str = "127.0.0.1",
        http_ports: Sequence[int] = (8080,),
        grpc_ports: Sequence[int] = (),
        tcp_ports: Sequence[int] = (),
        *,
        version: str = "v1",
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.bind = bind
        self.version = version
        self.http_ports: tuple[int, ...] = tuple(http_ports)
        self.grpc_ports: tuple[int, ...] = tuple(grpc_ports)
        self.tcp_ports: tuple[int, ...] = tuple(tcp_ports)
        self.requests_served = 0
        self._counter_lock = threading.Lock()
        self._servers: list[asyncio.Server] = []
        self._grpc: list[grpc.Server] = []
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    def _count_request(self) -> None:
        with self._counter_lock:  # gRPC replies run on worker threads
            self.requests_served += 1

    def __repr__(self) -> str:
        return f"EchoServer({self.name!r}, {self.namespace!r}, bind={self.bind!r})"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> EchoServer:
        try:
            self.http_ports = tuple(
                [await self._listen(p, self._serve_http) for p in self.http_ports]
            )
            self.tcp_ports = tuple([await self._listen(p, self._serve_tcp) for p in self.tcp_ports])
            if self.grpc_ports:
                self.grpc_ports = self._start_grpc()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _listen(self, port: int, handler: _Handler) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections[task] = writer
            try:
                await handler(reader, writer)
            except (OSError, errors.HboneError, asyncio.IncompleteReadError):
                pass  # a client going away mid-request is routine for a test backend
            finally:
                self._connections.pop(task, None)
                writer.close()

        try:
            server = await asyncio.start_server(tracked, self.bind, port, reuse_address=True)
        except OSError as exc:
            raise OSError(
                exc.errno, f"echo {self.name}: cannot listen on {self.bind}:{port}: {exc}"
            ) from exc
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    def _start_grpc(self) -> tuple[int, ...]:
        # One grpc.Server per port, so each reply can name the port it arrived on.
        return tuple(self._start_grpc_port(port) for port in self.grpc_ports)

    def _start_grpc_port(self, port: int) -> int:
        handler = _GrpcEcho(self)
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix=f"echo-{self.name}"
            ),
            handlers=[handler],
            options=[("grpc.so_reuseport", 0)],
        )
        bound = server.add_insecure_port(f"{self.bind}:{port}")
        if bound == 0:
            raise OSError(f"echo {self.name}: cannot listen for gRPC on {self.bind}:{port}")
        handler.port = bound
        server.start()
        self._grpc.append(server)
        return bound

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._connections.values()):
            writer.transport.abort()
        await _finish(set(self._connections))
        for server in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5.0)
        self._servers.clear()
        for grpc_server in self._grpc:
            done = grpc_server.stop(grace=None)
            await asyncio.get_running_loop().run_in_executor(None, done.wait, 5.0)
        self._grpc.clear()

    # -- HTTP/1.1 and h2c ---------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        ip = writer.get_extra_info("peername")[0]
        sock = streams.SocketStream(reader, writer)
        buffered = streams.BufferedReader(sock)
        if (await buffered.peekline()).startswith(_H2_PREFACE.split(b"\r\n", 1)[0]):
            await self._serve_h2c(streams.PrefixedStream(buffered.take_buffer(), sock), port, ip)
            return
        while True:
            try:
                request = await http1.read_request(buffered, send_continue=sock)
            except errors.ProtocolViolation as exc:
                sock.write(
                    http1.encode_response(
                        400, [("Content-Type", "text/plain")], f"{exc}\n".encode()
                    )
                )
                await sock.drain()
                return
            if request is None:
                return
            seen = _Seen(
                port,
                request.header("host") or "",
                request.target,
                request.method,
                "HTTP/1.1",
                ip,
                [(k, v) for k, v in request.headers if k.lower() != "host"],
            )
            body, content_type = _render(self, seen)
            self._count_request()
            headers = [("Content-Type", content_type)]
            if not request.keep_alive:
                headers.append(("Connection", "close"))
            sock.write(
                http1.encode_response(200, headers, body, head_only=request.method == "HEAD")
            )
            await sock.drain()
            if not request.keep_alive:
                return

    async def _serve_h2c(self, io: streams.ByteStream, port: int, ip: str) -> None:
        async def handle(stream: h2io.Stream) -> None:
            await self._answer_h2(stream, port, ip)

        conn = h2io.H2Connection(
            io, client_side=False, on_request=handle, name=f"echo {self.name} h2c"
        )
        await conn.start()
        try:
            await conn.wait_closed()
        finally:
            await conn.aclose()

    async def _answer_h2(self, stream: h2io.Stream, port: int, ip: str) -> None:
        req = stream.request_headers
        await stream.read_all(limit=http1.DEFAULT_BODY_LIMIT)
        seen = _Seen(
            port,
            h2io.header(req, ":authority") or "",
            h2io.header(req, ":path") or "",
            h2io.header(req, ":method") or "",
            "HTTP/2.0",
            ip,
            [(k, v) for k, v in req if not k.startswith(":")],
        )
        body, content_type = _render(self, seen)
        self._count_request()
        stream.send_headers(
            [(":status", "200"), ("content-type", content_type), ("content-length", str(len(body)))]
        )
        stream.write(body)
        stream.write_eof()
        await stream.drain()

    # -- TCP -----------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"Hostname={self.name}\n".encode())
        while chunk := await reader.read(streams.READ_SIZE):
            writer.write(chunk)
            await writer.drain()
        self._count_request()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()

    # -- gRPC ----------------------------------------------------------------------------

    def grpc_reply(
        self, port: int, method: str, request: bytes, context: grpc.ServicerContext
    ) -> bytes:
        """Answer any unary method with an EchoResponse carrying the echo text."""
        message = echo_pb2.EchoRequest.FromString(request).message
        metadata = [(key, _text(value)) for key, value in context.invocation_metadata()]
        peer = context.peer()
        ip = peer.split(":", 1)[1].rsplit(":", 1)[0] if ":" in peer else peer
        authority = h2io.header(metadata, ":authority") or ""
        seen = _Seen(port, authority, method, "POST", "GRPC", ip, metadata, message)
        self._count_request()
        reply: bytes = echo_pb2.EchoResponse(
            message=format_text(_fields(self, seen))
        ).SerializeToString()
        return reply


if TYPE_CHECKING:
    _GenericRpcHandler = grpc.GenericRpcHandler[bytes, bytes]
else:  # grpcio's runtime class is not subscriptable; only grpc-stubs' is
    _GenericRpcHandler = grpc.GenericRpcHandler


async def _finish(tasks: set[asyncio.Task[None]], timeout: float = 5.0) -> None:
    """Let connection handlers end on their own; cancel stragglers.

    Cancelling a ``start_server`` callback task makes asyncio log a spurious error, so
    transports are closed first and handlers are given the chance to return.
    """
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class _GrpcEcho(_GenericRpcHandler):
    """Route every method to :meth:`EchoServer.grpc_reply` with raw bytes in and out."""

    def __init__(self, server: EchoServer) -> None:
        self._server = server
        self.port = 0

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = handler_call_details.method

        def reply(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self._server.grpc_reply(self.port, method, request, context)

        return grpc.unary_unary_rpc_method_handler(reply)


def start_many(
    servers: Iterable[EchoServer], runner: loop.LoopThread | None = None
) -> list[EchoServer]:
    """Start several servers on one loop thread; stop any already started on failure."""
    started: list[EchoServer] = []
    try:
        for server in servers:
            started.append(server.start_background(runner))
    except BaseException:
        for server in started:
            server.stop_background()
        raise
    return started

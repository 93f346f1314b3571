"""A minimal asyncio HTTP/1.1 server for the small HTTP surfaces we expose.

Used for /metrics, /healthz and /readyz, and by the OPA Data API test double. It
supports keep-alive and Content-Length bodies, which is all our clients (Prometheus,
kubelet probes, aiohttp) send; it runs on the service's own event loop so probes see
the same state as the gRPC handlers without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

from extauthz import config

_MAX_HEADER_LINES = 100
_MAX_BODY = 8 * 1024 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}
_REASONS |= {405: "Method Not Allowed", 413: "Payload Too Large", 503: "Service Unavailable"}


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """The client sent something we do not parse."""


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise BadRequest("bad request line")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADER_LINES):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        raise BadRequest("too many headers")
    if "chunked" in headers.get("transfer-encoding", ""):
        raise BadRequest("chunked bodies are not supported")
    length = int(headers.get("content-length", "0") or "0")
    if length < 0 or length > _MAX_BODY:
        raise BadRequest("bad content-length")
    body = await reader.readexactly(length) if length else b""
    return Request(method=parts[0], path=parts[1], headers=headers, body=body)


def _encode(response: Response, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + response.body


class HttpServer:
    """Serve one handler on host:port until ``close``."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, listen: str) -> int:
        """Bind ``host:port`` (port 0 picks one) and return the bound port."""
        host, port = config.host_port(listen, "listen")
        self._server = await asyncio.start_server(self._serve, host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._loop(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await _read_request(reader)
            except (BadRequest, ValueError) as exc:
                writer.write(_encode(Response(400, str(exc).encode()), keep_alive=False))
                await writer.drain()
                return
            if request is None:
                return
            keep_alive = request.headers.get("connection", "").lower() != "close"
            response = await self._handler(request)
            writer.write(_encode(response, keep_alive))
            await writer.drain()
            if not keep_alive:
                return

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await self._server.wait_closed()
            self._server = None

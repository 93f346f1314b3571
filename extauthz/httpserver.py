"""The small HTTP surfaces we expose, served by ``aiohttp.web``.

Used for /metrics, /healthz and /readyz, and by the OPA Data API test double. Each
server hands every request to one handler, which does its own routing, so unknown paths
and methods get the handler's answers. It runs on the service's own event loop so probes
see the same state as the gRPC handlers without locks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from extauthz import config

MAX_BODY = 8 << 20  # aiohttp answers 413 past this
TEXT = "text/plain; charset=utf-8"
# Keep-alive connections (a Prometheus scraper, probes) are not waited for on close.
_SHUTDOWN_TIMEOUT = 0.5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def response(status: int, body: bytes = b"", content_type: str = TEXT) -> web.Response:
    """A whole response; ``content_type`` may carry parameters (aiohttp's argument may not)."""
    return web.Response(status=status, body=body, headers={"Content-Type": content_type})


def path(request: web.Request) -> str:
    """The request target's path as sent (not percent-decoded), without the query."""
    return request.raw_path.partition("?")[0]


class HttpServer:
    """Serve one handler on host:port until ``close``."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._runner: web.AppRunner | None = None

    async def start(self, listen: str) -> int:
        """Bind ``host:port`` (port 0 picks one) and return the bound port."""
        host, port = config.host_port(listen, "listen")
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound: int = runner.addresses[0][1]
        return bound

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

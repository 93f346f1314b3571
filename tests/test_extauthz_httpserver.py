"""The probe and metrics server (``extauthz.httpserver`` on aiohttp.web): routing and limits."""

from __future__ import annotations

import asyncio
import http.client

import prometheus_client
import pytest

from extauthz import httpserver, metrics


def _ask(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.getheader("content-type") or "", reply.read()
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_probes_metrics_and_hostile_requests() -> None:
    ready = False
    server = httpserver.HttpServer(metrics.http_handler(metrics.Metrics(), lambda: ready))
    port = await server.start("127.0.0.1:0")
    try:
        status, kind, body = await asyncio.to_thread(_ask, port, "GET", "/metrics?x=1")
        assert (status, kind) == (200, prometheus_client.CONTENT_TYPE_LATEST)
        assert b"extauthz_checks" in body
        assert (await asyncio.to_thread(_ask, port, "GET", "/healthz"))[::2] == (200, b"ok\n")
        assert (await asyncio.to_thread(_ask, port, "GET", "/readyz"))[::2] == (503, b"not ready\n")
        ready = True
        assert (await asyncio.to_thread(_ask, port, "GET", "/readyz"))[::2] == (200, b"ready\n")
        assert (await asyncio.to_thread(_ask, port, "HEAD", "/healthz"))[::2] == (200, b"")
        assert (await asyncio.to_thread(_ask, port, "POST", "/healthz"))[0] == 405
        assert (await asyncio.to_thread(_ask, port, "GET", "/nope"))[::2] == (404, b"not found\n")
        huge = {"x-big": "v" * 70_000}
        assert (await asyncio.to_thread(_ask, port, "GET", "/healthz", huge))[0] == 400
    finally:
        await server.close()

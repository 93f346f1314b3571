"""A TEST DOUBLE for the OPA server's Data API, backed by the embedded regorus engine.

Production runs the official OPA image as a sidecar (``engine: opa``). The OPA binary
cannot be installed on our build machines, so tests and load tests exercise the
``engine: opa`` client path against this server instead. It implements exactly what
that path uses:

- ``POST /v1/data/<path>`` with ``{"input": ...}`` answers ``{"result": <value>}``, or
  ``{}`` when the document is undefined (OPA's behaviour);
- ``GET /health`` answers 200 ``{}``.

Knobs for failure tests: ``delay`` (seconds before answering a data query) and
``fail_status`` (answer every data query with that HTTP status). Run it standalone with
``python -m extauthz.testing.opa_server --listen 127.0.0.1:8181 policy.rego [data.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
from collections.abc import Sequence

import regorus
from aiohttp import web

from extauthz import httpserver, policy

_JSON = "application/json"


class OpaTestServer:
    """Serve OPA's Data API over HTTP/1.1 from regorus."""

    def __init__(self, modules: Sequence[pathlib.Path], rego_version: str = "v1") -> None:
        self._engine: regorus.Engine | None = policy.load_regorus(tuple(modules), rego_version)
        self._http = httpserver.HttpServer(self._handle)
        self.delay = 0.0
        self.fail_status: int | None = None
        self.queries = 0
        self.port = 0

    async def start(self, listen: str = "127.0.0.1:0") -> int:
        self.port = await self._http.start(listen)
        return self.port

    async def close(self) -> None:
        """Stop serving. The engine stays, so the same server can start again."""
        await self._http.close()

    def release(self) -> None:
        """Free the regorus engine on this thread (it must not be freed on another)."""
        self._engine = None

    async def _handle(self, request: web.Request) -> web.Response:
        path = httpserver.path(request)
        if path == "/health" and request.method == "GET":
            return httpserver.response(200, b"{}", _JSON)
        if not path.startswith("/v1/data"):
            return httpserver.response(404, b'{"code":"not_found"}', _JSON)
        if request.method != "POST":
            return httpserver.response(405, b'{"code":"method_not_allowed"}', _JSON)
        self.queries += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_status is not None:
            return httpserver.response(self.fail_status, b'{"code":"internal_error"}', _JSON)
        return self._query(path[len("/v1/data") :], await request.read())

    def _query(self, doc_path: str, body: bytes) -> web.Response:
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return httpserver.response(400, b'{"code":"invalid_parameter"}', _JSON)
        segments = [s for s in doc_path.split("/") if s]
        query = "data" + "".join(f'["{s}"]' for s in segments)
        if self._engine is None:
            return httpserver.response(503, b'{"code":"closed"}', _JSON)
        try:
            self._engine.set_input_json(json.dumps(payload.get("input", {})))
            rows = self._engine.eval_query(query)
        except RuntimeError as exc:
            error = {"code": "internal_error", "message": policy.rust_error(exc)}
            return httpserver.response(500, json.dumps(error).encode(), _JSON)
        value = policy.query_value(rows)
        answer = {} if value is None else {"result": value}
        return httpserver.response(200, json.dumps(answer).encode(), _JSON)


async def _main(listen: str, modules: list[pathlib.Path]) -> None:
    server = OpaTestServer(modules)
    port = await server.start(listen)
    print(f"opa test double listening on port {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8181")
    parser.add_argument("modules", nargs="+", type=pathlib.Path)
    cli = parser.parse_args()
    asyncio.run(_main(cli.listen, cli.modules))

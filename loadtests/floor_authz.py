"""The floor: a bare allow-all ext_authz server in Python gRPC (grpc.aio), and nothing else.

It parses nothing beyond what grpc does for it and answers OK to every Check. Whatever it adds
through Envoy is the cost of a Python gRPC hop; extauthz's full check (JWT + Rego) is measured
against it. Run it with ``python -m loadtests.floor_authz --listen 127.0.0.1:9292``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2  # type: ignore[import-untyped,unused-ignore]

_ALLOW = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0))


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Allow every request."""

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        return _ALLOW


async def serve(listen: str) -> None:
    """Serve on ``listen`` (host:port) until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AllowAll(), server)
    server.add_insecure_port(listen)
    await server.start()
    print(f"floor ext_authz listening on {listen}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:9292")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()

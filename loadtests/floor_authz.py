"""The floor: a bare allow-all ext_authz server in Python gRPC (grpc.aio), and nothing else.

It parses nothing beyond what grpc does for it and answers OK to every Check. Whatever it adds
through Envoy is the cost of a Python gRPC hop; extauthz's full check (JWT + Rego) is measured
against it. Run it with ``python -m loadtests.floor_authz --listen 127.0.0.1:9292``.

``--transport h2`` serves the same allow-all answer on extauthz's own transport
(:mod:`extauthz.h2grpc`), which parses the request just as grpc.aio's deserializer does: the
least extauthz itself could add, so the bench can say what the check costs on top of it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2  # type: ignore[import-untyped,unused-ignore]

from extauthz import h2grpc

_ALLOW = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0))


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Allow every request."""

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        return _ALLOW


async def _allow(request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
    return _ALLOW


async def _start(listen: str, transport: str) -> grpc.aio.Server | h2grpc.Server:
    if transport == "h2":
        method = h2grpc.Method(
            "/envoy.service.auth.v3.Authorization/Check",
            external_auth_pb2.CheckRequest.FromString,
            unary=_allow,
        )
        h2_server = h2grpc.Server([method])
        await h2_server.add_address(listen)
        return h2_server
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AllowAll(), server)
    server.add_insecure_port(listen)
    await server.start()
    return server


async def serve(listen: str, transport: str = "aio") -> None:
    """Serve on ``listen`` (host:port) until SIGTERM or SIGINT."""
    server = await _start(listen, transport)
    print(f"floor ext_authz ({transport}) listening on {listen}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:9292")
    parser.add_argument("--transport", choices=("aio", "h2"), default="aio")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.transport))


if __name__ == "__main__":
    main()

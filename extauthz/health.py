"""grpc.health.v1 (Check and Watch) for the h2grpc transport, over a table of statuses.

It keeps the interface of grpc's own aio HealthServicer that the server drives (``set``,
``enter_graceful_shutdown``), so both transports are wired the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from grpc_health.v1 import health_pb2

from extauthz import h2grpc

SERVICE = "grpc.health.v1.Health"
_Status = health_pb2.HealthCheckResponse


class Health:
    """Service name -> serving status; watchers hear every change."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._shutdown = False

    async def set(self, service: str, status: int) -> None:
        if self._shutdown:
            return
        self._status[service] = status
        self._changed.set()
        self._changed = asyncio.Event()

    async def enter_graceful_shutdown(self) -> None:
        """Every service becomes NOT_SERVING for good, and watch streams end."""
        for service in self._status:
            self._status[service] = _Status.NOT_SERVING
        self._shutdown = True
        self._changed.set()

    async def check(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            raise h2grpc.RpcError(h2grpc.NOT_FOUND, f"unknown service {request.service!r}")
        return _Status(status=status)

    async def watch(
        self, request: health_pb2.HealthCheckRequest
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            changed = self._changed
            status = self._status.get(request.service, _Status.SERVICE_UNKNOWN)
            if status != last:
                last = status
                yield _Status(status=status)
            if self._shutdown:
                return
            await changed.wait()

    def methods(self) -> list[h2grpc.Method]:
        parse = health_pb2.HealthCheckRequest.FromString
        return [
            h2grpc.Method(f"/{SERVICE}/Check", parse, unary=self.check),
            h2grpc.Method(f"/{SERVICE}/Watch", parse, server_stream=self.watch),
        ]

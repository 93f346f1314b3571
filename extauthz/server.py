"""Assemble and run the extauthz gRPC server.

Two transports serve the same services (Authorization, grpc.health.v1, reflection):
``h2`` (the default), the project's lean server in :mod:`extauthz.h2grpc`, and ``grpcio``
(grpc.aio). Static keys and embedded policies load before the port is bound, so a broken policy or
JWKS file stops startup with a clear error. Remote JWKS and the OPA connection become
ready in the background; grpc.health.v1 reports NOT_SERVING until they are, then
SERVING. Stopping stops accepting, drains in-flight checks for the grace period, and
closes the engine, the metrics endpoint and the decision log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pathlib
import time
from typing import Any, Protocol

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from extauthz import allocator, config, decisioncache, h2grpc, httpserver, metrics, policy, service
from extauthz import health as h2health
from extauthz import jwt as jwt_auth

log = logging.getLogger(__name__)

AUTHZ_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
_HEALTH_NAMES = ("", AUTHZ_SERVICE)
_SERVICES = (AUTHZ_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)


class RpcServer(Protocol):
    """What the server needs of a transport: stop accepting, drain, close."""

    async def stop(self, grace: float | None) -> Any: ...


class HealthTable(Protocol):
    """The health servicer both transports share the shape of."""

    async def set(self, service: str, status: Any) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


class StartupError(RuntimeError):
    """Policies or keys could not be loaded; the message says which."""


@dataclasses.dataclass
class ExtAuthzServer:
    """A running server and the parts tests and operators look at."""

    rpc_server: RpcServer
    port: int
    metrics_port: int | None
    health: HealthTable
    authenticator: jwt_auth.Authenticator
    engine: policy.Engine
    metrics: metrics.Metrics
    checker: service.Checker
    decision_log: service.DecisionLog
    http: httpserver.HttpServer | None
    ready_task: asyncio.Task[None]
    stopping: bool = False

    @property
    def ready(self) -> bool:
        return not self.stopping and self.engine.ready and self.authenticator.ready

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.ready_task), timeout)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, drain in-flight checks for ``grace`` seconds, release all."""
        self.stopping = True
        await self.health.enter_graceful_shutdown()
        self.ready_task.cancel()
        await self.rpc_server.stop(grace)
        await self.engine.close()
        if self.http is not None:
            await self.http.close()
        self.decision_log.close()


def grpc_address(listen: str) -> str:
    """The address string grpc wants for ``host:port`` or ``unix:/path``."""
    parsed = config.parse_listen(listen, "listen")
    if isinstance(parsed, pathlib.Path):
        return f"unix:{parsed}"
    host, port = parsed
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _prepare_unix(listen: str) -> None:
    parsed = config.parse_listen(listen, "listen")
    if isinstance(parsed, pathlib.Path) and parsed.is_socket():
        # A socket left by a killed predecessor would make the bind fail.
        parsed.unlink()


def _load(settings: config.Settings, authenticator: jwt_auth.Authenticator) -> policy.Engine:
    try:
        authenticator.load_static()
    except (OSError, ValueError) as exc:
        raise StartupError(f"jwt: {exc}") from None
    try:
        return policy.make_engine(settings.policy)
    except policy.PolicyError as exc:
        raise StartupError(f"policy: {exc}") from None


def decision_cache(
    settings: config.Settings, engine: policy.Engine
) -> decisioncache.DecisionCache | None:
    """The decision cache, when it is asked for and the policy provably allows one."""
    if settings.policy.cache_entries == 0 or not isinstance(engine, policy.EmbeddedEngine):
        return None
    analysis = engine.analysis()
    if not analysis.cacheable:
        log.info("decision cache off: %s", analysis.reason)
        return None
    shown = ", ".join("input." + ".".join(map(str, p)) for p in analysis.paths) or "nothing"
    log.info("decision cache on (%d entries), keyed by %s", settings.policy.cache_entries, shown)
    return decisioncache.DecisionCache(
        analysis.paths, settings.policy.cache_entries, settings.policy.cache_bytes
    )


async def run_server(
    settings: config.Settings,
    *,
    listen: str | None = None,
    clock: jwt_auth.Clock = time.time,
) -> tuple[ExtAuthzServer, int]:
    """Start serving; return the server and its bound TCP port (0 for a unix socket)."""
    stats = metrics.Metrics()
    authenticator = jwt_auth.Authenticator(settings.jwt, clock, stats.jwks_fetched)
    engine = _load(settings, authenticator)
    decision_log = service.DecisionLog(settings.decision_log)
    checker = service.Checker(
        settings, authenticator, engine, stats, decision_log, cache=decision_cache(settings, engine)
    )
    address = listen or settings.listen
    _prepare_unix(address)
    try:
        rpc_server, health_servicer, port = await _TRANSPORTS[settings.transport](
            settings, checker, address
        )
    except (RuntimeError, OSError) as exc:
        await engine.close()
        decision_log.close()
        raise StartupError(f"listen: cannot bind {address}: {exc}") from None

    async def become_ready() -> None:
        await asyncio.gather(engine.start(), authenticator.start())
        for name in _HEALTH_NAMES:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("extauthz ready on %s", address)

    ready_task = asyncio.get_running_loop().create_task(become_ready())
    running = ExtAuthzServer(
        rpc_server=rpc_server,
        port=0 if address.startswith("unix:") else port,
        metrics_port=None,
        health=health_servicer,
        authenticator=authenticator,
        engine=engine,
        metrics=stats,
        checker=checker,
        decision_log=decision_log,
        http=None,
        ready_task=ready_task,
    )
    if settings.metrics_listen is not None:
        running.http = httpserver.HttpServer(metrics.http_handler(stats, lambda: running.ready))
        running.metrics_port = await running.http.start(settings.metrics_listen)
    return running, running.port


async def _grpcio(
    settings: config.Settings, checker: service.Checker, address: str
) -> tuple[RpcServer, HealthTable, int]:
    # grpc enables SO_REUSEPORT by default; a second server on our port should fail
    # loudly unless several processes sharing it is what the operator asked for.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if settings.reuse_port else 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        service.AuthorizationServicer(checker), server
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined,unused-ignore]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await _not_serving(health_servicer)
    reflection.enable_server_reflection(_SERVICES, server)
    port = server.add_insecure_port(grpc_address(address))
    await server.start()
    return server, health_servicer, port


async def _h2(
    settings: config.Settings, checker: service.Checker, address: str
) -> tuple[RpcServer, HealthTable, int]:
    # Bodies held past 64 KiB get pages of their own, returned when their call ends, so the
    # process's RSS follows max_buffered_request_bytes (see allocator).
    if not allocator.return_large_blocks():
        log.info("extauthz: not glibc's malloc; large request buffers are left to it")
    health_table = h2health.Health()
    await _not_serving(health_table)
    # grpc's own reflection logic, one request at a time: it answers each with exactly one
    # response and never touches the context (its stubs type it as returning None).
    answers: Any = reflection.ReflectionServicer(_SERVICES).ServerReflectionInfo

    def reflection_answer(request: reflection_pb2.ServerReflectionRequest) -> Any:
        return next(iter(answers(iter((request,)), None)))

    methods = [
        h2grpc.Method(
            f"/{AUTHZ_SERVICE}/Check",
            external_auth_pb2.CheckRequest.FromString,
            unary=checker.check,
            unparsable=checker.unparsable,
        ),
        *health_table.methods(),
        h2grpc.Method(
            f"/{reflection.SERVICE_NAME}/ServerReflectionInfo",
            reflection_pb2.ServerReflectionRequest.FromString,
            per_message=reflection_answer,
        ),
    ]
    server = h2grpc.Server(
        methods, limits=settings.limits, on_event=checker.metrics.transport_event
    )
    port = await server.add_address(grpc_address(address), reuse_port=settings.reuse_port)
    return server, health_table, port


async def _not_serving(table: HealthTable) -> None:
    for name in _HEALTH_NAMES:
        await table.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


_TRANSPORTS = {"h2": _h2, "grpcio": _grpcio}


async def serve_forever(
    settings: config.Settings, listen: str | None, stop: asyncio.Event, worker_restarts: int = 0
) -> None:
    """Run until ``stop`` is set, then shut down gracefully."""
    running, _port = await run_server(settings, listen=listen)
    running.metrics.worker_restarts.set(worker_restarts)
    try:
        await stop.wait()
    finally:
        log.info("extauthz stopping: draining for up to %ss", settings.shutdown_grace_seconds)
        with contextlib.suppress(asyncio.CancelledError):
            await running.stop(settings.shutdown_grace_seconds)

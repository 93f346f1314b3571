"""Locust users for the waypoint: plain HTTP, HTTP through HBONE, and extauthz Check over gRPC.

Every user sends the weighted scenario mix of :mod:`loadtests.scenarios` at a constant
throughput (``RunSpec.user_rate`` requests per second per user), so ``users × user_rate`` is
the fixed request rate of a run. Each request is reported to locust under its scenario's
name, so the web UI, the CSVs and the HTML report have one row per scenario. A response whose
status (or, on routed paths, whose backend) is not what the scenario expects is a failure.

- :class:`DirectUser`: HTTP/1.1 keep-alive (locust's FastHttpUser) to a backend or a plain
  Envoy HTTP proxy. FastHttpUser rather than the requests-based HttpUser: it costs several
  times less CPU per request, CPU the system under test needs on a small machine.
- :class:`HboneUser`: HTTP/1.1 inside HBONE tunnels to a waypoint, with the project's
  :class:`~waypoint.local.hbone.client.SyncHboneClient` (mTLS with a SPIFFE identity, HTTP/2
  CONNECT), one shared outer connection per locust process as ztunnel would pool it.
- :class:`GrpcUser`: ``envoy.service.auth.v3.Authorization/Check`` straight to extauthz.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from typing import Any

import grpc
import locust
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from locust.contrib import fasthttp

from loadtests import scenarios
from waypoint import pki
from waypoint.local import echo
from waypoint.local.hbone import client as hbone_client
from waypoint.local.hbone import errors as hbone_errors
from waypoint.local.hbone import http1, streams

_TIMEOUT = 10.0
_SPEC: scenarios.RunSpec | None = None
_SPEC_LOCK = threading.Lock()
_USER_SEEDS = itertools.count(1)


def spec() -> scenarios.RunSpec:
    """The run spec of this locust process (read once from ``$LOADTEST_SPEC``)."""
    global _SPEC
    with _SPEC_LOCK:
        if _SPEC is None:
            _SPEC = scenarios.RunSpec.from_env()
        return _SPEC


def _picker() -> scenarios.Picker:
    """A picker with its own seed per user, so users do not send the mix in lockstep."""
    return scenarios.Picker(seed=spec().seed * 1000 + next(_USER_SEEDS))


def _rate_wait(user: locust.User) -> float:
    return float(locust.constant_throughput(spec().user_rate)(user))


class _MixUser(locust.User):
    """Pick a scenario per request from the weighted mix; subclasses send it."""

    abstract = True
    wait_time = _rate_wait

    def on_start(self) -> None:
        self.picker = _picker()

    def fire(
        self,
        kind: str,
        scenario: scenarios.Scenario,
        started: float,
        length: int,
        error: BaseException | None,
    ) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=scenario.name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=error,
            context={},
        )


def send_direct(user: Any) -> None:
    """One scenario over the user's HTTP client (FastHttpUser's or HttpUser's: same API)."""
    scenario = user.picker.next()
    run = spec()
    want = scenarios.expected_status(run, scenario)
    with user.client.get(
        scenario.path,
        headers=dict(scenarios.headers_for(run, scenario)),
        name=scenario.name,
        catch_response=True,
    ) as response:
        if response.status_code != want:
            response.failure(f"status {response.status_code}, expected {want}")


class DirectUser(fasthttp.FastHttpUser):  # type: ignore[misc,unused-ignore]
    """HTTP/1.1 keep-alive to ``RunSpec.target`` (a backend or a plain Envoy proxy)."""

    wait_time = _rate_wait
    tasks = [send_direct]  # noqa: RUF012 - locust's own class attribute

    def on_start(self) -> None:
        self.picker = _picker()


class PlainHttpUser(locust.HttpUser):  # type: ignore[misc,unused-ignore]
    """The same as :class:`DirectUser` on locust's requests-based ``HttpUser``.

    It costs several times more CPU per request than FastHttpUser, so the harness uses
    :class:`DirectUser`; this one is for users who extend their existing HttpUser classes.
    """

    wait_time = _rate_wait
    tasks = [send_direct]  # noqa: RUF012 - locust's own class attribute

    def on_start(self) -> None:
        self.picker = _picker()


_HBONE: hbone_client.SyncHboneClient | None = None
_HBONE_LOCK = threading.Lock()


def shared_hbone() -> hbone_client.SyncHboneClient:
    """One HBONE client (one outer mTLS connection) for every user of this process."""
    global _HBONE
    with _HBONE_LOCK:
        if _HBONE is None:
            run = spec()
            host, _, port = run.target.rpartition(":")
            identity = pki.load_identity(run.cert_dir)
            _HBONE = hbone_client.SyncHboneClient(
                (host, int(port)),
                identity.ssl_context(server=False),
                expected_server_id=run.server_id or None,
                timeout=_TIMEOUT,
            )
        return _HBONE


def close_shared() -> None:
    """Close this process's HBONE connection (at locust's quitting)."""
    global _HBONE
    with _HBONE_LOCK:
        client, _HBONE = _HBONE, None
    if client is not None:
        client.close()


class HboneUser(_MixUser):
    """HTTP/1.1 through HBONE to the waypoint (or a pod's terminator) at ``RunSpec.target``.

    With ``RunSpec.keepalive`` (the default) each user keeps one tunnel and sends its requests
    on it with HTTP/1.1 keep-alive, as an application's pooled connection through ztunnel
    would; otherwise every request opens a fresh tunnel (a new connection per request).
    """

    def on_start(self) -> None:
        super().on_start()
        self.tunnel: hbone_client.SyncTunnel | None = None
        self.reader: streams.BufferedReader | None = None

    def on_stop(self) -> None:
        self._drop_tunnel()

    @locust.task
    def send(self) -> None:
        scenario = self.picker.next()
        run = spec()
        started = time.perf_counter()
        length = 0
        error: BaseException | None = None
        try:
            response = self._exchange(run, scenario)
            length = len(response.body)
            error = _judge(run, scenario, response)
        except (hbone_errors.HboneError, OSError, TimeoutError) as exc:
            self._drop_tunnel()
            error = exc
        self.fire("HBONE", scenario, started, length, error)

    def _exchange(
        self, run: scenarios.RunSpec, scenario: scenarios.Scenario
    ) -> hbone_client.Response:
        headers = scenarios.headers_for(run, scenario)
        if not run.keepalive:
            return shared_hbone().request(run.authority, "GET", scenario.path, headers)
        client = shared_hbone()
        if self.tunnel is None or self.reader is None:
            self.tunnel = client.open_tunnel(run.authority)
            self.reader = streams.BufferedReader(self.tunnel.tunnel)
        response = client.runner.run(
            _keepalive_exchange(
                self.tunnel.tunnel, self.reader, scenario.path, headers, run.authority
            ),
            _TIMEOUT,
        )
        if "close" in (response.header("connection") or "").lower():
            self._drop_tunnel()
        return response

    def _drop_tunnel(self) -> None:
        tunnel, self.tunnel, self.reader = self.tunnel, None, None
        if tunnel is not None:
            with contextlib.suppress(hbone_errors.HboneError, OSError, TimeoutError):
                tunnel.close()


async def _keepalive_exchange(
    tunnel: hbone_client.Tunnel,
    reader: streams.BufferedReader,
    path: str,
    headers: list[tuple[str, str]],
    host: str,
) -> hbone_client.Response:
    """One request on a kept tunnel; the reader persists so no buffered byte is lost."""
    tunnel.write(http1.encode_request("GET", path, headers, b"", host))
    await tunnel.drain()
    return await http1.read_response(reader, "GET")


class CheckFailed(Exception):
    """A response that is not what the scenario expects."""


def _judge(
    run: scenarios.RunSpec, scenario: scenarios.Scenario, response: hbone_client.Response
) -> CheckFailed | None:
    want = scenarios.expected_status(run, scenario)
    if response.status != want:
        return CheckFailed(f"status {response.status}, expected {want}")
    if want == 200 and run.routed and scenario.backend_prefix:
        problem = scenarios.check_backend(scenario, run, echo.parse_echo(response.body).hostname)
        if problem:
            return CheckFailed(problem)
    return None


def check_request(run: scenarios.RunSpec, scenario: scenarios.Scenario) -> Any:
    """The CheckRequest Envoy would send for ``scenario`` (attributes as a waypoint fills them)."""
    ctx = attribute_context_pb2.AttributeContext
    headers = {":method": "GET", ":path": scenario.path, ":authority": "echo.demo"}
    headers.update(scenarios.headers_for(run, scenario))
    return external_auth_pb2.CheckRequest(
        attributes=ctx(
            source=ctx.Peer(principal="spiffe://cluster.local/ns/demo/sa/loadgen"),
            destination=ctx.Peer(principal="spiffe://cluster.local/ns/demo/sa/waypoint"),
            request=ctx.Request(
                http=ctx.HttpRequest(
                    id="loadtest",
                    method="GET",
                    path=scenario.path,
                    host="echo.demo",
                    scheme="http",
                    protocol="HTTP/1.1",
                    headers=headers,
                )
            ),
        )
    )


def status_of(response: Any) -> int:
    """The HTTP status Envoy would answer with for a CheckResponse."""
    if response.status.code == 0:
        return 200
    return int(response.denied_response.status.code)


class GrpcUser(_MixUser):
    """``Authorization/Check`` to extauthz at ``RunSpec.target`` over one gRPC channel."""

    def on_start(self) -> None:
        super().on_start()
        self.channel = grpc.insecure_channel(spec().target)
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.requests = {s.name: check_request(spec(), s) for s in scenarios.MIX}

    def on_stop(self) -> None:
        self.channel.close()

    @locust.task
    def send(self) -> None:
        scenario = self.picker.next()
        run = spec()
        started = time.perf_counter()
        length = 0
        error: BaseException | None = None
        try:
            response = self.stub.Check(self.requests[scenario.name], timeout=5.0)
            length = response.ByteSize()
            want = scenarios.expected_status(run, scenario)
            if status_of(response) != want:
                error = CheckFailed(f"status {status_of(response)}, expected {want}")
        except grpc.RpcError as exc:
            error = exc
        self.fire("gRPC", scenario, started, length, error)

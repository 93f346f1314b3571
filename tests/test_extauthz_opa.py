"""``engine: opa`` against the OPA Data API test double: decisions, fail-closed when
OPA is down, slow or erroring, recovery without restart, readiness, and a graceful
SIGTERM drain of the real ``extauthz serve`` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz.testing import opa_server
from tests import conftest
from tests.extauthz import support
from tests.test_extauthz_service import check, http_status, serving

pytestmark = pytest.mark.asyncio


def _opa_settings(tmp_path: pathlib.Path, port: int, timeout_ms: int = 300, **kw: Any) -> Any:
    return support.settings(
        tmp_path,
        policy={
            "engine": "opa",
            "decision": kw.pop("decision", "envoy/authz/allow"),
            "opa": {"url": f"http://127.0.0.1:{port}", "timeout_ms": timeout_ms},
        },
        **kw,
    )


@contextlib.asynccontextmanager
async def running_opa(port: int = 0) -> AsyncIterator[opa_server.OpaTestServer]:
    server = opa_server.OpaTestServer([support.POLICY, support.DATA])
    await server.start(f"127.0.0.1:{port}")
    try:
        yield server
    finally:
        await server.close()
        server.release()


def _post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


async def test_test_double_speaks_the_data_api() -> None:
    async with running_opa() as opa:
        allow = {
            "input": {
                "parsed_path": ["public"],
                "attributes": {"request": {"http": {"method": "GET"}}},
            }
        }
        assert await asyncio.to_thread(_post, opa.port, "/v1/data/envoy/authz/allow", allow) == {
            "result": True
        }
        assert await asyncio.to_thread(_post, opa.port, "/v1/data/envoy/authz/missing", allow) == {}
        package = await asyncio.to_thread(_post, opa.port, "/v1/data/envoy/authz", allow)
        assert package["result"]["allow"] is True
        assert await asyncio.to_thread(_post, opa.port, "/v1/data/teams", {}) == {
            "result": ["checkout", "search"]
        }


async def test_opa_allow_deny_and_undefined(tmp_path: pathlib.Path) -> None:
    async with running_opa() as opa, serving(_opa_settings(tmp_path, opa.port)) as (_s, channel):
        assert http_status(await check(channel, path="/public")) == 200
        assert http_status(await check(channel, path="/public", method="DELETE")) == 403
        token = support.token(support.claims(role="admin"))
        admin = await check(channel, path="/admin", headers={"authorization": f"Bearer {token}"})
        assert http_status(admin) == 200
        assert http_status(await check(channel, path="/data", headers={"x-team": "search"})) == 200
    async with running_opa() as opa:
        settings = _opa_settings(tmp_path, opa.port, decision="envoy/authz/response")
        async with serving(settings) as (_s, channel):
            teapot = await check(channel, path="/teapot")
            assert http_status(teapot) == 418
            assert teapot.denied_response.body == "short and stout"
        undefined = _opa_settings(tmp_path, opa.port, decision="envoy/authz/missing")
        async with serving(undefined) as (_s, channel):
            assert http_status(await check(channel, path="/public")) == 403


async def test_opa_down_slow_or_failing_fails_closed_then_recovers(tmp_path: pathlib.Path) -> None:
    port = conftest.free_port()
    async with (
        running_opa(port) as opa,
        serving(_opa_settings(tmp_path, port, 200)) as (srv, channel),
    ):
        assert http_status(await check(channel, path="/public")) == 200

        opa.delay = 2.0
        assert http_status(await check(channel, path="/public")) == 403
        opa.delay = 0.0
        opa.fail_status = 500
        assert http_status(await check(channel, path="/public")) == 403
        opa.fail_status = None
        assert http_status(await check(channel, path="/public")) == 200

        await opa.close()
        assert http_status(await check(channel, path="/public")) == 403
        text = srv.metrics.text().decode()
        assert 'extauthz_policy_errors_total{engine="opa"} 3.0' in text
        async with running_opa(port):
            assert http_status(await check(channel, path="/public")) == 200
    reasons = [line["result"].get("reason", "") for line in support.decision_lines(tmp_path)]
    assert "did not answer within 200 ms" in reasons[1]
    assert "500" in reasons[2]


async def test_not_serving_until_opa_is_reachable(tmp_path: pathlib.Path) -> None:
    port = conftest.free_port()
    async with serving(_opa_settings(tmp_path, port), wait=False) as (srv, channel):
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        assert (
            await health.Check(request, timeout=5)
        ).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert http_status(await check(channel, path="/public")) == 403
        async with running_opa(port):
            await srv.wait_ready()
            assert (
                await health.Check(request, timeout=5)
            ).status == health_pb2.HealthCheckResponse.SERVING
            assert http_status(await check(channel, path="/public")) == 200


async def _wait_serving(target: str, process: asyncio.subprocess.Process) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            assert process.returncode is None, "extauthz exited early"
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("extauthz never became SERVING")


async def test_sigterm_drains_in_flight_checks(tmp_path: pathlib.Path) -> None:
    port = conftest.free_port()
    doc = support.base_config(
        tmp_path,
        policy={"engine": "opa", "opa": {"url": "", "timeout_ms": 10_000}},
    )
    async with running_opa() as opa:
        doc["policy"]["opa"]["url"] = f"http://127.0.0.1:{opa.port}"
        path = support.write_config(tmp_path, doc)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "extauthz.cli",
            "serve",
            "--config",
            str(path),
            "--listen",
            f"127.0.0.1:{port}",
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(conftest.REPO)},
        )
        try:
            target = f"127.0.0.1:{port}"
            await _wait_serving(target, process)
            opa.delay = 1.0
            async with grpc.aio.insecure_channel(target) as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                in_flight = asyncio.ensure_future(
                    stub.Check(support.check_request("/public"), timeout=20)
                )
                while opa.queries < 1:
                    await asyncio.sleep(0.02)
                process.send_signal(signal.SIGTERM)
                response = await in_flight
                assert response.status.code == 0
            assert await asyncio.wait_for(process.wait(), 20) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    stderr = (await process.stderr.read()).decode() if process.stderr else ""
    assert "draining" in stderr

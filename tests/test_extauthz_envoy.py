"""End to end through a real Envoy: ext_authz filter -> our server -> echo backend.

Covers allowed, denied (403), invalid token (401 + WWW-Authenticate), missing token,
decision headers reaching upstream and client, claim_to_headers and
forward_payload_header, request bodies, decision ids in Envoy's access log,
fail-closed on engine errors and on a down OPA (with recovery), dry-run, and Envoy
reaching us over a unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from extauthz import config
from tests import conftest
from tests.extauthz import support
from tests.test_extauthz_opa import running_opa
from tests.test_extauthz_service import serving

pytestmark = pytest.mark.asyncio

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
DECISION_ID = "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%"


def _address(target: str) -> dict[str, Any]:
    if target.startswith("unix:"):
        return {"pipe": {"path": target[len("unix:") :]}}
    host, port = config.host_port(target, "target")
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster(name: str, target: str, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(target)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def envoy_config(
    admin: int, port: int, authz_target: str, backend: int, access_log: pathlib.Path
) -> dict[str, Any]:
    """One HTTP listener: ext_authz (gRPC to us, fail closed, bodies) then the router."""
    ext_authz = {
        "@type": EXT_AUTHZ,
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        "with_request_body": {"max_request_bytes": 8192, "allow_partial_message": True},
        "grpc_service": {"envoy_grpc": {"cluster_name": "extauthz"}, "timeout": "2s"},
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": "ingress",
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE_LOG,
                    "path": str(access_log),
                    "log_format": {
                        "text_format_source": {"inline_string": f"%RESPONSE_CODE% {DECISION_ID}\n"}
                    },
                },
            }
        ],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                }
            ]
        },
        "http_filters": [
            {"name": "envoy.filters.http.ext_authz", "typed_config": ext_authz},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    return {
        "admin": {"address": _address(f"127.0.0.1:{admin}")},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": _address(f"127.0.0.1:{port}"),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _cluster("extauthz", authz_target, http2=True),
                _cluster("backend", f"127.0.0.1:{backend}"),
            ],
        },
    }


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def echo(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


def _send(port: int, path: str, method: str, headers: dict[str, str], body: str | None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


async def call(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> Reply:
    return await asyncio.to_thread(_send, port, path, method, headers or {}, body)


def bearer(**overrides: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {support.token(support.claims(**overrides))}"}


@contextlib.contextmanager
def short_tmp() -> Iterator[pathlib.Path]:
    # Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer.
    path = pathlib.Path(tempfile.mkdtemp(prefix="xa-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_through_envoy_embedded(tmp_path: pathlib.Path, envoy: conftest.EnvoyStarter) -> None:
    settings = support.settings(tmp_path, policy__decision="envoy/authz/response")
    admin, port = conftest.free_port(), conftest.free_port()
    access_log = tmp_path / "access.log"
    with support.echo_backend() as backend:
        async with serving(settings) as (srv, _channel):
            proxy = envoy(
                envoy_config(admin, port, f"127.0.0.1:{srv.port}", backend, access_log), admin
            )

            public = await call(port, "/public/page", headers={"x-jwt-sub": "forged"})
            assert public.status == 200
            assert public.echo()["path"] == "/public/page"
            assert "x-jwt-sub" not in public.echo()["headers"]

            assert (await call(port, "/public/page", method="POST", body="x")).status == 403
            assert (await call(port, "/admin")).status == 403
            assert (await call(port, "/admin", headers=bearer(role="viewer"))).status == 403

            admin_reply = await call(port, "/admin/users", headers=bearer(role="admin"))
            assert admin_reply.status == 200
            upstream = admin_reply.echo()["headers"]
            assert upstream["x-jwt-sub"] == "alice"
            assert json.loads(support.base64_payload(upstream["x-jwt-payload"]))["role"] == "admin"
            assert "authorization" not in upstream

            expired = await call(port, "/public/page", headers=bearer(exp=1))
            assert expired.status == 401
            assert expired.headers["www-authenticate"] == 'Bearer error="invalid_token"'
            garbage = await call(port, "/admin", headers={"authorization": "Bearer abc.def"})
            assert garbage.status == 401

            decorated = await call(
                port, "/decorated?drop=1&keep=2", headers={"x-remove-me": "1", "x-policy": "client"}
            )
            assert decorated.status == 200
            echoed = decorated.echo()
            assert echoed["headers"]["x-policy"] == "decorated"
            assert "x-remove-me" not in echoed["headers"]
            assert "drop=" not in echoed["path"]
            assert "keep=2" in echoed["path"]
            assert "added=yes" in echoed["path"]
            assert decorated.headers["x-resp"] == "from-policy"

            teapot = await call(port, "/teapot")
            assert teapot.status == 418
            assert teapot.body == b"short and stout"
            assert teapot.headers["x-deny-reason"] == "teapot"

            order = await call(
                port,
                "/orders",
                method="POST",
                headers={"content-type": "application/json"},
                body='{"qty": 3}',
            )
            assert order.status == 200
            assert order.echo()["body"] == '{"qty": 3}'

            assert (await call(port, "/boom")).status == 403
            assert (await call(port, "/public/again")).status == 200
            proxy.stop()  # flushes the access log

    decisions = support.decision_lines(tmp_path)
    logged = [line.split(" ", 1) for line in access_log.read_text().splitlines()]
    assert len(logged) == len(decisions) == 12
    assert [ident for _code, ident in logged] == [d["decision_id"] for d in decisions]
    assert [int(code) for code, _ident in logged] == [d["result"]["http_status"] for d in decisions]


async def test_through_envoy_unix_socket_and_dry_run(
    tmp_path: pathlib.Path, envoy: conftest.EnvoyStarter
) -> None:
    admin, port = conftest.free_port(), conftest.free_port()
    with short_tmp() as sockdir, support.echo_backend() as backend:
        listen = f"unix:{sockdir}/authz.sock"
        settings = support.settings(tmp_path, dry_run=True)
        async with serving(settings, listen=listen) as (_srv, _channel):
            envoy(envoy_config(admin, port, listen, backend, tmp_path / "access.log"), admin)
            assert (await call(port, "/public")).status == 200
            assert (await call(port, "/admin")).status == 200
            assert (await call(port, "/admin", headers=bearer(exp=1))).status == 200
            reply = await call(port, "/admin", headers=bearer(role="admin"))
            assert reply.echo()["headers"]["x-jwt-sub"] == "alice"
    outcomes = [d["result"]["outcome"] for d in support.decision_lines(tmp_path)]
    assert outcomes == ["allowed", "denied", "unauthenticated", "allowed"]


async def test_through_envoy_opa_fails_closed_and_recovers(
    tmp_path: pathlib.Path, envoy: conftest.EnvoyStarter
) -> None:
    admin, port, opa_port = conftest.free_port(), conftest.free_port(), conftest.free_port()
    settings = support.settings(
        tmp_path,
        policy={"engine": "opa", "opa": {"url": f"http://127.0.0.1:{opa_port}", "timeout_ms": 300}},
    )
    with support.echo_backend() as backend:
        async with running_opa(opa_port) as opa, serving(settings) as (srv, _channel):
            envoy(
                envoy_config(admin, port, f"127.0.0.1:{srv.port}", backend, tmp_path / "a.log"),
                admin,
            )
            assert (await call(port, "/public")).status == 200
            opa.delay = 1.0
            assert (await call(port, "/public")).status == 403
            opa.delay = 0.0
            await opa.close()
            assert (await call(port, "/public")).status == 403
            async with running_opa(opa_port):
                assert (await call(port, "/public")).status == 200
                assert (await call(port, "/admin")).status == 403


def _health_flags(proxy: Any) -> str:
    text: str = proxy.admin_get("/clusters")
    for line in text.splitlines():
        if line.startswith("extauthz::") and "::health_flags::" in line:
            return line.rsplit("::", 1)[1]
    return ""


async def _wait_flags(proxy: Any, wanted: str) -> None:
    # Flags may carry extra detail (e.g. /failed_active_hc/active_hc_timeout).
    for _ in range(200):
        if wanted in await asyncio.to_thread(_health_flags, proxy):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"extauthz health flags never became {wanted!r}")


async def test_envoy_health_checks_see_serving_only_after_ready(
    tmp_path: pathlib.Path, envoy: conftest.EnvoyStarter
) -> None:
    admin, port = conftest.free_port(), conftest.free_port()
    with (
        support.JwksServer(support.TRUSTED_JWKS).running() as jwks,
        support.echo_backend() as backend,
    ):
        jwks.status = 503
        doc = support.base_config(tmp_path)
        provider = doc["jwt"]["providers"][0]
        del provider["jwks"]
        provider["jwks_uri"] = jwks.uri
        settings = config.from_mapping(doc, tmp_path)
        async with serving(settings, wait=False) as (srv, _channel):
            cfg = envoy_config(admin, port, f"127.0.0.1:{srv.port}", backend, tmp_path / "a.log")
            # no_traffic_interval matters: a cluster that has seen no traffic is checked
            # only every 60 s by default, whatever `interval` says.
            cfg["static_resources"]["clusters"][0]["health_checks"] = [
                {
                    "timeout": "1s",
                    "interval": "0.1s",
                    "no_traffic_interval": "0.1s",
                    "unhealthy_threshold": 1,
                    "healthy_threshold": 1,
                    "grpc_health_check": {"service_name": "envoy.service.auth.v3.Authorization"},
                }
            ]
            proxy = await asyncio.to_thread(envoy, cfg, admin)
            await _wait_flags(proxy, "/failed_active_hc")
            jwks.status = 200
            await srv.wait_ready()
            await _wait_flags(proxy, "healthy")
            assert (await call(port, "/user", headers=bearer())).status == 200

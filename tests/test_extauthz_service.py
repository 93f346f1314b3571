"""The Check service over real gRPC (in-process server, grpc.aio client).

Covers the opa-envoy-plugin input shape, decisions (bool and object), 401/400/403
mapping, fail-closed on engine errors, dry-run, the decision log, health, reflection,
metrics and a unix-socket listener. Every test runs on both transports: the default h2
server (extauthz/h2grpc.py) and grpc.aio.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format  # type: ignore[import-untyped,unused-ignore]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from extauthz import config, decision, protojson, server, tokens
from extauthz import input as policy_input
from extauthz import jwt as jwt_auth
from tests import conftest
from tests.extauthz import support

pytestmark = pytest.mark.asyncio
_TRANSPORT = ["h2"]  # the transport under test, set by the autouse fixture below


@pytest.fixture(autouse=True, params=["h2", "grpcio"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    _TRANSPORT[0] = request.param
    yield request.param
    _TRANSPORT[0] = "h2"


Stub = external_auth_pb2_grpc.AuthorizationStub


@contextlib.asynccontextmanager
async def serving(
    settings: config.Settings, listen: str | None = None, wait: bool = True
) -> AsyncIterator[tuple[server.ExtAuthzServer, grpc.aio.Channel]]:
    settings = dataclasses.replace(settings, transport=_TRANSPORT[0])  # type: ignore[arg-type]
    running, port = await server.run_server(settings, listen=listen)
    target = listen if listen else f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        if wait:
            await running.wait_ready()
        yield running, channel
    finally:
        await channel.close(None)
        await running.stop(0)


async def check(channel: grpc.aio.Channel, **kwargs: Any) -> external_auth_pb2.CheckResponse:
    response: external_auth_pb2.CheckResponse = await Stub(channel).Check(
        support.check_request(**kwargs), timeout=10
    )
    return response


def headers_of(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


def meta(response: external_auth_pb2.CheckResponse) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(response.dynamic_metadata)
    return result


def bearer(**overrides: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {support.token(support.claims(**overrides))}"}


def http_status(response: external_auth_pb2.CheckResponse) -> int:
    if response.HasField("denied_response"):
        return int(response.denied_response.status.code)
    assert response.status.code == 0
    return 200


# -- input document -------------------------------------------------------------------


async def test_input_document_matches_opa_envoy_plugin() -> None:
    request = support.check_request(
        "/orders/a%20b/?q=1&q=2&empty=",
        method="POST",
        headers={"content-type": "application/json", "content-length": "9"},
        body='{"qty":3}',
        source=support.FRONTEND,
        destination=support.ORDERS,
    )
    http = policy_input.http_of(request)
    headers = policy_input.headers_of(http)
    segments, query = policy_input.parse_path(http.path)
    identity = jwt_auth.Identity("corp", {"sub": "alice"}, "e30", "authorization", 0.0)
    parts = policy_input.documents(request, http, headers, segments, query, identity)
    doc = policy_input.complete(request, parts)
    assert doc["parsed_path"] == ["orders", "a b", ""]
    assert doc["parsed_query"] == {"q": ["1", "2"], "empty": [""]}
    assert doc["parsed_body"] == {"qty": 3}
    assert doc["truncated_body"] is False
    assert doc["version"] == {"encoding": "protojson", "ext_authz": "v3"}
    assert doc["source_principal"] == support.FRONTEND
    assert doc["destination_principal"] == support.ORDERS
    assert doc["jwt"] == {"provider": "corp", "claims": {"sub": "alice"}}
    source = doc["attributes"]["source"]["address"]["socketAddress"]
    assert source == {"address": "10.0.0.1", "portValue": 40000}
    assert doc["attributes"]["request"]["http"]["headers"]["content-type"] == "application/json"


async def test_parse_path_edges() -> None:
    assert policy_input.parse_path("/") == ([""], {})
    assert policy_input.parse_path("/a/b#frag") == (["a", "b"], {})
    with pytest.raises(policy_input.MalformedRequest):
        policy_input.parse_path("/bad%zzescape")


# -- decisions through gRPC -----------------------------------------------------------


async def test_bool_decisions_and_identity_headers(tmp_path: pathlib.Path) -> None:
    async with serving(support.settings(tmp_path)) as (_srv, channel):
        allowed = await check(channel, path="/public/x")
        assert http_status(allowed) == 200
        assert len(meta(allowed)["decision_id"]) == 32

        denied = await check(channel, path="/public/x", method="POST")
        assert http_status(denied) == 403
        assert denied.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert "decision_id" in meta(denied)

        anonymous_admin = await check(channel, path="/admin")
        assert http_status(anonymous_admin) == 403

        admin = await check(channel, path="/admin", headers=bearer(role="admin"))
        assert http_status(admin) == 200
        upstream = headers_of(admin.ok_response.headers)
        assert upstream["x-jwt-sub"] == "alice"
        payload = json.loads(support.base64_payload(upstream["x-jwt-payload"]))
        assert payload["role"] == "admin"
        # The token is not forwarded (Istio's forwardOriginalToken: false).
        assert "authorization" in admin.ok_response.headers_to_remove
        assert "x-jwt-sub" not in admin.ok_response.headers_to_remove

        viewer = await check(channel, path="/admin", headers=bearer(role="viewer"))
        assert http_status(viewer) == 403


async def test_client_cannot_forge_identity_headers(tmp_path: pathlib.Path) -> None:
    async with serving(support.settings(tmp_path)) as (_srv, channel):
        forged = await check(channel, path="/public", headers={"x-jwt-sub": "root"})
        assert http_status(forged) == 200
        assert set(forged.ok_response.headers_to_remove) >= {"x-jwt-sub", "x-jwt-payload"}
        assert "x-jwt-sub" not in headers_of(forged.ok_response.headers)


async def test_invalid_token_is_401_before_policy(tmp_path: pathlib.Path) -> None:
    async with serving(support.settings(tmp_path)) as (srv, channel):
        expired = await check(channel, path="/public", headers=bearer(exp=1))
        assert http_status(expired) == 401
        assert expired.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert headers_of(expired.denied_response.headers) == {
            "www-authenticate": 'Bearer error="invalid_token"',
            "content-type": "application/json",
        }
        reason = json.loads(expired.denied_response.body)
        assert reason["error"] == "unauthenticated"
        assert reason["decision_id"]
        garbage = await check(channel, path="/public", headers={"authorization": "Bearer x"})
        assert http_status(garbage) == 401
        text = srv.metrics.text().decode()
        assert 'extauthz_checks_total{outcome="unauthenticated"} 2.0' in text


async def test_malformed_requests_are_400(tmp_path: pathlib.Path) -> None:
    async with serving(support.settings(tmp_path)) as (_srv, channel):
        empty = await Stub(channel).Check(external_auth_pb2.CheckRequest(), timeout=10)
        assert http_status(empty) == 400
        bad_json = await check(
            channel,
            path="/orders",
            method="POST",
            headers={"content-type": "application/json"},
            body="{not json",
        )
        assert http_status(bad_json) == 400
        bad_escape = await check(channel, path="/public/%zz")
        assert http_status(bad_escape) == 400


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"path": "/mesh", "source": support.FRONTEND, "destination": support.ORDERS}, 200),
        ({"path": "/mesh", "source": "spiffe://cluster.local/ns/x/sa/y"}, 403),
        ({"path": "/search?q=shoes&q=socks"}, 200),
        ({"path": "/search?q=shoes"}, 403),
        (
            {
                "path": "/orders",
                "method": "POST",
                "headers": {"content-type": "application/json"},
                "body": '{"qty": 3}',
            },
            200,
        ),
        (
            {
                "path": "/form",
                "method": "POST",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
                "body": "name=ada",
            },
            200,
        ),
        (
            {
                "path": "/big",
                "method": "POST",
                "headers": {"content-type": "application/json", "content-length": "100000"},
                "body": '{"partial": ',
            },
            200,
        ),
        ({"path": "/data", "headers": {"x-team": "checkout"}}, 200),
        ({"path": "/data", "headers": {"x-team": "marketing"}}, 403),
    ],
)
async def test_policy_sees_opa_envoy_plugin_input(
    tmp_path: pathlib.Path, kwargs: dict[str, Any], status: int
) -> None:
    async with serving(support.settings(tmp_path)) as (_srv, channel):
        assert http_status(await check(channel, **kwargs)) == status


async def test_engine_error_fails_closed_and_recovers(tmp_path: pathlib.Path) -> None:
    async with serving(support.settings(tmp_path)) as (srv, channel):
        boom = await check(channel, path="/boom")
        assert http_status(boom) == 403
        assert 'extauthz_policy_errors_total{engine="embedded"} 1.0' in srv.metrics.text().decode()
        assert http_status(await check(channel, path="/public")) == 200
    line = support.decision_lines(tmp_path)[0]
    assert line["result"]["outcome"] == "policy_error"
    assert "conflict" in line["result"]["reason"]


async def test_object_decisions(tmp_path: pathlib.Path) -> None:
    settings = support.settings(
        tmp_path,
        policy__decision="envoy/authz/response",
    )
    async with serving(settings) as (_srv, channel):
        decorated = await check(channel, path="/decorated?drop=1")
        ok = decorated.ok_response
        assert [
            (o.header.key, o.header.value) for o in ok.headers if o.header.key == "x-multi"
        ] == [
            ("x-multi", "a"),
            ("x-multi", "b"),
        ]
        assert headers_of(ok.headers)["x-policy"] == "decorated"
        assert headers_of(ok.response_headers_to_add) == {"x-resp": "from-policy"}
        assert "x-remove-me" in ok.headers_to_remove
        assert [(q.key, q.value) for q in ok.query_parameters_to_set] == [("added", "yes")]
        assert list(ok.query_parameters_to_remove) == ["drop"]
        assert meta(decorated)["team"] == "checkout"
        assert "decision_id" in meta(decorated)

        teapot = await check(channel, path="/teapot")
        assert http_status(teapot) == 418
        assert teapot.denied_response.body == "short and stout"
        assert headers_of(teapot.denied_response.headers) == {"x-deny-reason": "teapot"}

        assert http_status(await check(channel, path="/badshape")) == 403
        assert http_status(await check(channel, path="/public")) == 200
        assert http_status(await check(channel, path="/private")) == 403


async def test_undefined_decision_denies(tmp_path: pathlib.Path) -> None:
    undefined = tmp_path / "undefined.rego"
    undefined.write_text("package envoy.authz\nimport rego.v1\nallow if input.never\n")
    settings = support.settings(tmp_path, policy__modules=[str(undefined)])
    async with serving(settings) as (_srv, channel):
        assert http_status(await check(channel, path="/public")) == 403


async def test_dry_run_allows_but_logs_the_real_decision(tmp_path: pathlib.Path) -> None:
    token = support.token(support.claims())
    async with serving(support.settings(tmp_path, dry_run=True)) as (srv, channel):
        denied = await check(channel, path="/admin")
        assert http_status(denied) == 200
        assert meta(denied)["dry_run_outcome"] == "denied"
        invalid = await check(channel, path="/public", headers=bearer(exp=1))
        assert http_status(invalid) == 200
        allowed = await check(
            channel, path="/public?access_token=" + token, headers={"x-jwt-sub": "forged"}
        )
        assert headers_of(allowed.ok_response.headers)["x-jwt-sub"] == "alice"
        text = srv.metrics.text().decode()
        assert 'extauthz_checks_total{outcome="denied"} 1.0' in text
    lines = support.decision_lines(tmp_path)
    assert [line["result"]["outcome"] for line in lines] == ["denied", "unauthenticated", "allowed"]
    assert all(line["result"]["dry_run"] and line["result"]["allowed"] for line in lines)


async def test_decision_log_redacts_tokens(tmp_path: pathlib.Path) -> None:
    token = support.token(support.claims(role="admin"))
    async with serving(support.settings(tmp_path)) as (_srv, channel):
        await check(
            channel,
            path="/admin",
            headers={"authorization": f"Bearer {token}"},
            source=support.FRONTEND,
        )
        await check(channel, path="/admin?access_token=" + token)
        await check(channel, path="/public", headers={"cookie": f"session={token}"})
    raw = (tmp_path / "decisions.log").read_text()
    assert token not in raw
    assert token.split(".")[2] not in raw
    first = json.loads(raw.splitlines()[0])
    assert first["input"] == {
        "method": "GET",
        "host": "orders.shop",
        "path": "/admin",
        "source_principal": support.FRONTEND,
        "segments": 1,
        "jwt": {"provider": "corp", "iss": support.ISSUER, "sub": "alice"},
    }
    assert first["result"]["outcome"] == "allowed"
    assert set(first["timings_us"]) == {"authn_us", "policy_us", "total_us"}
    assert len(first["decision_id"]) == 32


# -- operations -----------------------------------------------------------------------


def _http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(response.status)


async def test_health_serving_only_once_keys_are_ready(tmp_path: pathlib.Path) -> None:
    with support.JwksServer(support.TRUSTED_JWKS).running() as jwks:
        jwks.status = 503
        doc = support.base_config(tmp_path)
        provider = doc["jwt"]["providers"][0]
        del provider["jwks"]
        provider["jwks_uri"] = jwks.uri
        settings = config.from_mapping(doc, tmp_path)
        async with serving(settings, wait=False) as (srv, channel):
            while jwks.hits < 2:
                await asyncio.sleep(0.05)
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            assert await _health(channel) == not_serving
            assert await _health(channel, server.AUTHZ_SERVICE) == not_serving
            assert srv.metrics_port is not None
            status, _ = await asyncio.to_thread(_http_get, srv.metrics_port, "/readyz")
            assert status == 503
            status, _ = await asyncio.to_thread(_http_get, srv.metrics_port, "/healthz")
            assert status == 200
            # Before keys arrive a token cannot verify: fail closed with 401.
            assert http_status(await check(channel, path="/user", headers=bearer())) == 401
            jwks.status = 200
            await srv.wait_ready()
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
            status, _ = await asyncio.to_thread(_http_get, srv.metrics_port, "/readyz")
            assert status == 200
            assert http_status(await check(channel, path="/user", headers=bearer())) == 200
            status, text = await asyncio.to_thread(_http_get, srv.metrics_port, "/metrics")
            assert status == 200
            assert 'extauthz_jwks_fetches_total{provider="corp",result="error"}' in text
            assert 'extauthz_jwks_fetches_total{provider="corp",result="ok"} 1.0' in text
            assert "extauthz_check_duration_seconds_bucket" in text


async def test_reflection_lists_services(tmp_path: pathlib.Path) -> None:
    async with serving(support.settings(tmp_path)) as (_srv, channel):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names: list[str] = []
        async for answer in stub.ServerReflectionInfo(requests(), timeout=5):
            names.extend(s.name for s in answer.list_services_response.service)
        assert "envoy.service.auth.v3.Authorization" in names
        assert "grpc.health.v1.Health" in names


async def test_unix_socket_listener(tmp_path: pathlib.Path) -> None:
    short = pathlib.Path(tempfile.mkdtemp(prefix="xa-", dir="/tmp"))
    try:
        listen = f"unix:{short}/extauthz.sock"
        async with serving(support.settings(tmp_path), listen=listen) as (srv, channel):
            assert srv.port == 0
            assert http_status(await check(channel, path="/public")) == 200
    finally:
        shutil.rmtree(short)


async def test_decision_parse_rejects_bad_shapes() -> None:
    bad_values: tuple[object, ...] = (
        [],
        "yes",
        {"allowed": 1},
        {"allowed": True, "extra": 1},
        {"allowed": True, "http_status": 99},
        {"allowed": True, "dynamic_metadata": {1: "a"}},
        {"allowed": True, "headers": {"x": 1}},
        {"allowed": True, "request_headers_to_remove": "x"},
    )
    for bad in bad_values:
        with pytest.raises(decision.DecisionError):
            decision.parse(bad)
    assert decision.parse(None) == decision.DENY
    assert decision.parse(True) == decision.ALLOW


async def test_example_config_semantics(tmp_path: pathlib.Path) -> None:
    """The example `waypoint up` uses: GET /public for all, /admin for role admin, else 403."""
    example = support.HERE.parent.parent / "examples" / "extauthz"
    settings = config.load(example / "config.yaml")
    settings = dataclasses.replace(
        settings, listen="127.0.0.1:0", metrics_listen=None, decision_log="off"
    )
    key = (example / "demo-signing-key.pem").read_bytes()

    def demo(role: str, ttl: int = 3600) -> dict[str, str]:
        minted = tokens.mint(
            key,
            "demo-1",
            "https://issuer.waypoint.example",
            "waypoint-demo",
            ttl_seconds=ttl,
            claims={"role": role},
        )
        return {"authorization": f"Bearer {minted}"}

    async with serving(settings) as (_srv, channel):
        assert http_status(await check(channel, path="/public/index.html")) == 200
        assert http_status(await check(channel, path="/public", method="POST")) == 403
        assert http_status(await check(channel, path="/admin")) == 403
        assert http_status(await check(channel, path="/admin", headers=demo("viewer"))) == 403
        admin = await check(channel, path="/admin/users", headers=demo("admin"))
        assert http_status(admin) == 200
        assert headers_of(admin.ok_response.headers)["x-jwt-role"] == "admin"
        assert http_status(await check(channel, path="/orders")) == 403
        assert http_status(await check(channel, path="/public", headers=demo("admin", -600))) == 401


async def test_port_sharing_only_when_asked(tmp_path: pathlib.Path) -> None:
    port = conftest.free_port()
    first = support.settings(
        tmp_path, listen=f"127.0.0.1:{port}", metrics_listen=None, transport=_TRANSPORT[0]
    )
    async with serving(first):
        with pytest.raises(server.StartupError, match="cannot bind"):
            await server.run_server(first)
    shared = dataclasses.replace(first, reuse_port=True)
    async with serving(shared), serving(shared) as (_srv, channel):
        assert http_status(await check(channel, path="/public")) == 200


async def test_fast_protojson_equals_message_to_dict() -> None:
    request = support.check_request(
        "/a?b=1",
        method="POST",
        headers={"user-agent": "curl/8"},
        body='{"a": 1}',
        source=support.FRONTEND,
        destination=support.ORDERS,
    )
    attrs = request.attributes
    attrs.request.time.FromSeconds(1_700_000_000)
    attrs.request.http.size = 1234
    attrs.request.http.raw_body = b"\x00\x01binary"
    attrs.request.http.header_map.headers.add(key="x-raw", raw_value=b"v")
    attrs.context_extensions["route"] = "orders"
    attrs.tls_session.sni = "orders.shop"
    attrs.metadata_context.filter_metadata["f"].update({"n": 1.5, "l": [1, "x", None]})
    attrs.source.labels["app"] = "web"
    attrs.source.address.socket_address.protocol = 1  # UDP: an enum by name
    attrs.destination.address.pipe.path = "/run/x.sock"
    assert protojson.message_to_dict(attrs) == json_format.MessageToDict(attrs)
    empty = external_auth_pb2.CheckRequest().attributes
    assert protojson.message_to_dict(empty) == json_format.MessageToDict(empty) == {}


# -- a payload Envoy's jwt_authn already verified -------------------------------------


def _with_envoy_payload(claims: dict[str, Any], **kwargs: Any) -> external_auth_pb2.CheckRequest:
    request = support.check_request(**kwargs)
    payload = request.attributes.metadata_context.filter_metadata[jwt_auth.ENVOY_JWT_FILTER]
    payload.update({jwt_auth.ENVOY_PAYLOAD_KEY: claims})
    return request


async def test_trust_envoy_metadata_skips_a_second_verification(tmp_path: pathlib.Path) -> None:
    claims = support.claims(role="admin")
    trusted = support.settings(tmp_path, jwt__trust_envoy_metadata=True)
    async with serving(trusted) as (_srv, channel):
        # No token in the headers (jwt_authn strips it): the metadata is the identity.
        response = await Stub(channel).Check(_with_envoy_payload(claims, path="/admin"), timeout=10)
        assert http_status(response) == 200
        assert headers_of(response.ok_response.headers)["x-jwt-sub"] == "alice"
        # A payload from an issuer extauthz does not trust is ignored, not believed.
        stranger = _with_envoy_payload({**claims, "iss": "https://other.test"}, path="/admin")
        assert http_status(await Stub(channel).Check(stranger, timeout=10)) == 403
    # Off by default: the same request is anonymous.
    async with serving(support.settings(tmp_path)) as (_srv, channel):
        plain = await Stub(channel).Check(_with_envoy_payload(claims, path="/admin"), timeout=10)
        assert http_status(plain) == 403


async def test_a_deny_carries_a_short_json_reason_unless_configured_off(
    tmp_path: pathlib.Path,
) -> None:
    """A policy deny without its own body: {"error","message","decision_id"} as JSON, as other
    gateways answer; deny_body: empty restores the empty body."""
    async with serving(support.settings(tmp_path)) as (_srv, channel):
        denied = await check(channel, path="/admin", headers=bearer(role="viewer"))
        assert http_status(denied) == 403
        assert headers_of(denied.denied_response.headers)["content-type"] == "application/json"
        reason = json.loads(denied.denied_response.body)
        assert (reason["error"], reason["message"]) == ("forbidden", "denied by policy")
        assert reason["decision_id"] == denied.dynamic_metadata.fields["decision_id"].string_value
    quiet = dataclasses.replace(support.settings(tmp_path), deny_body="empty")
    async with serving(quiet) as (_srv, channel):
        denied = await check(channel, path="/admin", headers=bearer(role="viewer"))
        assert http_status(denied) == 403
        assert denied.denied_response.body == ""

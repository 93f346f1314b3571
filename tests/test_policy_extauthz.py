"""extauthz's waypoint extensions over real gRPC: per-route decisions, a required JWT and
the SPIFFE principals, all carried in CheckRequest context extensions."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from extauthz import input as policy_input
from tests.extauthz import support
from tests.test_extauthz_service import Stub, check, headers_of, serving
from waypoint.envoy import ext_authz, source_principal

pytestmark = pytest.mark.asyncio

REGO = """
package waypoint

import rego.v1

default first := false

first if input.parsed_path[0] == "one"

default second := false

second if input.parsed_path[0] == "two"

echo := {
    "allowed": true,
    "headers": {
        "x-source": input.source_principal,
        "x-destination": input.destination_principal,
    },
}
"""


def _settings(tmp_path: pathlib.Path) -> Any:
    rego = tmp_path / "waypoint.rego"
    rego.write_text(REGO)
    return support.settings(
        tmp_path, policy__modules=[str(rego)], policy__decision="waypoint/first"
    )


def _request(
    path: str, extensions: dict[str, str], **kwargs: Any
) -> external_auth_pb2.CheckRequest:
    request = support.check_request(path=path, **kwargs)
    request.attributes.context_extensions.update(extensions)
    return request


async def _check(channel: Any, request: external_auth_pb2.CheckRequest) -> Any:
    return await Stub(channel).Check(request, timeout=10)


def _code(response: external_auth_pb2.CheckResponse) -> int:
    if response.HasField("denied_response"):
        return int(response.denied_response.status.code)
    return 200


async def test_extension_keys_match_the_envoy_side() -> None:
    assert policy_input.DECISION_KEY == ext_authz.CTX_DECISION
    assert policy_input.JWT_KEY == ext_authz.CTX_JWT
    assert policy_input.DESTINATION_PRINCIPAL_KEY == ext_authz.CTX_DESTINATION_PRINCIPAL
    assert policy_input.SOURCE_PRINCIPAL_HEADER_KEY == ext_authz.CTX_SOURCE_PRINCIPAL_HEADER


async def test_the_route_picks_the_decision(tmp_path: pathlib.Path) -> None:
    async with serving(_settings(tmp_path)) as (_srv, channel):
        # Without an extension: the configured decision (waypoint/first).
        assert _code(await check(channel, path="/one")) == 200
        assert _code(await check(channel, path="/two")) == 403
        second = {ext_authz.CTX_DECISION: "waypoint/second"}
        assert _code(await _check(channel, _request("/two", second))) == 200
        assert _code(await _check(channel, _request("/one", second))) == 403
        broken = {ext_authz.CTX_DECISION: "not a path"}
        assert _code(await _check(channel, _request("/one", broken))) == 403


async def test_a_required_token_is_401_when_missing(tmp_path: pathlib.Path) -> None:
    required = {ext_authz.CTX_JWT: "required"}
    async with serving(_settings(tmp_path)) as (_srv, channel):
        assert _code(await _check(channel, _request("/one", required))) == 401
        token = {"authorization": "Bearer " + support.token(support.claims())}
        ok = _request("/one", required, headers=token)
        assert _code(await _check(channel, ok)) == 200
        optional = {ext_authz.CTX_JWT: "optional"}
        assert _code(await _check(channel, _request("/one", optional))) == 200


async def test_principals_from_extensions_and_the_vouched_header(tmp_path: pathlib.Path) -> None:
    echo = {ext_authz.CTX_DECISION: "waypoint/echo"}
    header = source_principal.HEADER
    vouched = {
        **echo,
        ext_authz.CTX_SOURCE_PRINCIPAL_HEADER: header,
        ext_authz.CTX_DESTINATION_PRINCIPAL: support.ORDERS,
    }
    async with serving(_settings(tmp_path)) as (_srv, channel):
        got = await _check(channel, _request("/x", vouched, headers={header: support.FRONTEND}))
        assert headers_of(got.ok_response.headers) == {
            "x-source": support.FRONTEND,
            "x-destination": support.ORDERS,
        }
        # Without the waypoint's extension the header is just a header: not trusted.
        plain = await _check(channel, _request("/x", echo, headers={header: support.FRONTEND}))
        assert headers_of(plain.ok_response.headers)["x-source"] == ""
        # A TLS peer (Envoy's own attribute) wins over both.
        tls = _request(
            "/x",
            vouched,
            headers={header: "spiffe://cluster.local/ns/evil/sa/x"},
            source=support.FRONTEND,
            destination="spiffe://cluster.local/ns/shop/sa/db",
        )
        assert headers_of((await _check(channel, tls)).ok_response.headers) == {
            "x-source": support.FRONTEND,
            "x-destination": "spiffe://cluster.local/ns/shop/sa/db",
        }

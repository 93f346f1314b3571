"""The check hot path: fast protojson equals ``MessageToDict``, the log line is unchanged.

The equality tests pin the opa-envoy-plugin input to protobuf's own JSON mapping for the
shapes Envoy sends (addresses, headers, the request timestamp) and for the fallbacks
(well-known types, repeated and map fields, out-of-range timestamps). The benchmarks are
disabled by default and run once as tests; measure them with::

    .venv/bin/pytest -q tests/test_extauthz_hotpath.py --benchmark-enable
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format, timestamp_pb2  # type: ignore[import-untyped,unused-ignore]

from extauthz import config, metrics, policy, protojson, service
from extauthz import jwt as jwt_auth
from loadtests import authz

TIMESTAMPS = [
    (0, 0),
    (1_700_000_000, 0),
    (1_700_000_000, 1),
    (1_700_000_000, 120_000_000),
    (1_700_000_000, 123_456_000),
    (1_700_000_000, 123_456_789),
    (1_700_000_001, 999_999_999),
    (-1, 500_000_000),
    (-86_401, 7_000),
    (-62_135_596_800, 0),
    (253_402_300_799, 999_999_999),
    (951_782_400, 42),  # 2000-02-29, a leap day
]


def envoy_check_request(
    token: str, source_port: int = 53412, nanos: int = 123_456_789
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest shaped like the ones Envoy's HTTP ext_authz filter sends."""
    request = external_auth_pb2.CheckRequest()
    attrs = request.attributes
    attrs.source.address.socket_address.address = "127.0.0.1"
    attrs.source.address.socket_address.port_value = source_port
    attrs.destination.address.socket_address.address = "127.0.0.1"
    attrs.destination.address.socket_address.port_value = 10000
    attrs.request.time.seconds = 1_795_323_115
    attrs.request.time.nanos = nanos
    http = attrs.request.http
    http.id = "10470125134133153445"
    http.method, http.path, http.host = "GET", "/admin/orders", "127.0.0.1:10000"
    http.scheme, http.protocol = "http", "HTTP/1.1"
    http.headers.update(
        {
            ":authority": "127.0.0.1:10000",
            ":path": "/admin/orders",
            ":method": "GET",
            ":scheme": "http",
            "user-agent": "hey/0.0.1",
            "authorization": f"Bearer {token}",
            "x-request-id": "4b2a7c1e-5d0f-4d8e-9b1a-2f3c4d5e6f70",
        }
    )
    attrs.metadata_context.SetInParent()
    attrs.route_metadata_context.SetInParent()
    return request


@pytest.mark.parametrize(("seconds", "nanos"), TIMESTAMPS)
def test_timestamp_matches_json_format(seconds: int, nanos: int) -> None:
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert protojson.timestamp_to_json(stamp) == json_format.MessageToDict(stamp)


def test_timestamp_second_cache_does_not_leak_between_seconds() -> None:
    for seconds, nanos in TIMESTAMPS + list(reversed(TIMESTAMPS)):
        stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        assert protojson.timestamp_to_json(stamp) == json_format.MessageToDict(stamp)


@pytest.mark.parametrize(("seconds", "nanos"), [(0, -1), (0, 1_000_000_000), (-62_135_596_801, 0)])
def test_invalid_timestamp_fails_like_json_format(seconds: int, nanos: int) -> None:
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    with pytest.raises(ValueError, match="Timestamp is not valid") as expected:
        json_format.MessageToDict(stamp)
    with pytest.raises(expected.type, match="Timestamp is not valid") as got:
        protojson.timestamp_to_json(stamp)
    assert str(got.value) == str(expected.value)


def test_envoy_shaped_attributes_match_json_format() -> None:
    attrs = envoy_check_request("a.b.c").attributes
    assert protojson.message_to_dict(attrs) == json_format.MessageToDict(attrs)


def test_peer_cache_tells_connections_apart() -> None:
    # The same source twice (a cache hit), then other ports and principals: each answer
    # must be the one for its own bytes.
    for port in (1111, 1111, 2222, 1111):
        attrs = envoy_check_request("t", source_port=port).attributes
        got = protojson.message_to_dict(attrs)
        assert got == json_format.MessageToDict(attrs)
        assert got["source"]["address"]["socketAddress"]["portValue"] == port
    attrs.source.principal = "spiffe://cluster.local/ns/shop/sa/frontend"
    assert protojson.message_to_dict(attrs)["source"] == json_format.MessageToDict(attrs.source)


def test_generic_fallbacks_match_json_format() -> None:
    # Repeated messages and strings, wrappers, int64, enums, bool maps are not on Envoy's
    # CheckRequest today, but the converter must stay exact for whatever it is given.
    config_msg = route_pb2.RouteConfiguration(name="r")
    vhost = config_msg.virtual_hosts.add(name="v", domains=["a", "b"])
    route = vhost.routes.add(name="x")
    route.match.prefix = "/"
    route.route.cluster = "c"
    route.route.timeout.seconds = 3
    route.route.auto_host_rewrite.value = True
    route.match.headers.add(name="h").string_match.exact = "v"
    config_msg.max_direct_response_body_size_bytes.value = 4096
    config_msg.request_headers_to_add.add().header.key = "k"
    config_msg.request_headers_to_add[0].append_action = 1
    assert protojson.message_to_dict(config_msg) == json_format.MessageToDict(config_msg)


def test_decision_log_line_is_plain_json_dumps(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "decisions.log"
    log = service.DecisionLog(str(target))
    record: dict[str, Any] = {
        "decision_id": "ab",
        "ts": 1.5,
        "input": {"path": "/caf\u00e9", "n": None, "ok": True},
        "timings_us": {"total_us": 12.3},
    }
    log.write(record)
    log.close()
    assert target.read_text() == json.dumps(record, separators=(",", ":")) + "\n"


def _checker() -> service.Checker:
    doc = authz.bench_config("127.0.0.1:0")
    settings = config.from_mapping(doc, pathlib.Path.cwd())
    authn = jwt_auth.Authenticator(settings.jwt)
    authn.load_static()
    engine = policy.make_engine(settings.policy)
    return service.Checker(settings, authn, engine, metrics.Metrics(), service.DecisionLog("off"))


def _run_inline(checker: service.Checker, request: Any) -> external_auth_pb2.CheckResponse:
    coro = checker.check(request)
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the cached check path suspended")


def test_bench_protojson_envoy_attributes(benchmark: Any) -> None:
    attrs = envoy_check_request(authz.demo_tokens()["admin"]).attributes
    assert benchmark(protojson.message_to_dict, attrs) == json_format.MessageToDict(attrs)


def test_bench_json_format_envoy_attributes(benchmark: Any) -> None:
    attrs = envoy_check_request(authz.demo_tokens()["admin"]).attributes
    assert benchmark(json_format.MessageToDict, attrs)["request"]["http"]["method"] == "GET"


def test_bench_full_check_envoy_request(benchmark: Any) -> None:
    checker = _checker()
    request = envoy_check_request(authz.demo_tokens()["admin"])
    response = benchmark(_run_inline, checker, request)
    assert response.status.code == 0
    assert response.ok_response.headers[0].header.key == "x-jwt-sub"


def test_decision_lines_survive_what_orjson_refuses() -> None:
    # A sub claim may be any JSON value, so an integer beyond 64 bits, or a string with a
    # lone surrogate, can reach the log: json writes those lines instead, and any line that
    # would not be ASCII, as before orjson.
    for record in ({"sub": 2**70, "n": 1.5}, {"sub": "a\udc80b"}, {"sub": "plain ü"}):
        line = service._line(record)
        assert line.isascii()
        assert "\n" not in line
        assert json.loads(line) == record

"""The decision cache: what the Rego analysis finds, and that a cached decision is always the
decision the policy would have made.

The differential test drives two checkers, one with the cache and one without, over a
seeded stream of requests that vary both where the policy looks and where it does not
(including a Struct in metadata and header maps), and requires identical answers.
"""

from __future__ import annotations

import asyncio
import pathlib
import random
from typing import Any

import pytest
import regorus
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import struct_pb2  # type: ignore[import-untyped,unused-ignore]

from extauthz import config, decisioncache, metrics, policy, server, service
from extauthz import jwt as jwt_auth
from tests.extauthz import support


def analysis_of(source: str) -> decisioncache.Analysis:
    engine = regorus.Engine()
    engine.add_policy("p.rego", "package p\nimport rego.v1\n" + source)
    return decisioncache.analyze(engine.get_ast_as_json())


def test_analysis_collects_static_prefixes() -> None:
    found = analysis_of(
        """
import input.attributes.source as src
a if { input.attributes.request.http.method == "GET"; input.parsed_path[0] == "x" }
b if { input.jwt["claims"].sub == "u"; src.principal != "" }
c if { some k; input.parsed_query[k]; k == "q" }
d if { input.attributes.request.http.headers["x-user"] == "u" }
e if { input.parsed_path[1] == input.parsed_path[0] }
"""
    )
    assert found.cacheable
    assert found.paths == (
        ("attributes", "request", "http", "headers", "x-user"),
        ("attributes", "request", "http", "method"),
        ("attributes", "source"),
        ("jwt", "claims", "sub"),
        ("parsed_path", 0),
        ("parsed_path", 1),
        ("parsed_query",),
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("x := input", "whole input"),
        ("x if { input.a == 1 }\ny if { x with input as {} }", "whole input"),
        ("x if { time.now_ns() > input.jwt.claims.exp }", "time.now_ns"),
        ('x if { print("a"); input.a }', "print"),
        ("x := rand.intn(input.a, 10)", "rand.intn"),
        ("x := count(input)", "whole input"),
    ],
)
def test_analysis_refuses_what_it_cannot_prove(source: str, reason: str) -> None:
    found = analysis_of(source)
    assert not found.cacheable
    assert reason in str(found.reason)


def test_freeze_keeps_rego_types_apart() -> None:
    images = {decisioncache.freeze(v) for v in (True, 1, 1.0, "1", None, [1], {"1": 1})}
    assert len(images) == 7


DIFF_POLICY = """
package envoy.authz

import rego.v1

default allow := false

allow := true if {
	base
	not who
}

allow := {"allowed": true, "headers": {"x-who": input.jwt.claims.sub}} if who

who if {
	input.parsed_path[0] == "who"
	is_string(input.jwt.claims.sub)
}

base if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
}

base if {
	input.attributes.request.http.headers["x-tier"] == "gold"
	input.jwt.claims.role == "admin"
}

base if {
	input.attributes.metadataContext.filterMetadata.acme.tier == "gold"
	input.parsed_path[0] == "meta"
}

base if {
	input.source_principal == "spiffe://td/ns/a/sa/b"
	input.parsed_query.q[0] == "1"
}
"""


def _checker(tmp_path: pathlib.Path, cached: bool) -> service.Checker:
    rego = tmp_path / "diff.rego"
    rego.write_text(DIFF_POLICY)
    settings = support.settings(
        tmp_path,
        policy={
            "engine": "embedded",
            "modules": [str(rego)],
            "decision": "envoy/authz/allow",
            "cache_entries": 10_000 if cached else 0,
        },
        decision_log="off",
    )
    authn = jwt_auth.Authenticator(settings.jwt)
    authn.load_static()
    engine = policy.make_engine(settings.policy)
    cache = server.decision_cache(settings, engine)
    assert (cache is not None) == cached
    stats = metrics.Metrics()
    return service.Checker(settings, authn, engine, stats, service.DecisionLog("off"), cache=cache)


def _random_request(rng: random.Random, tokens: dict[str, str]) -> Any:
    # A small domain, so that keys repeat often, with values that differ only slightly
    # ("gold"/"golden", "GET"/"GETS", "1"/true) where a sloppy key would merge them.
    path = rng.choice(["/public", "/meta", "/who"]) + rng.choice(["", "?q=1"])
    headers = {"x-request-id": str(rng.random())}  # never read: must not split keys
    tier = rng.choice([None, "gold", "golden"])
    if tier is not None:
        headers["x-tier"] = tier
    token = rng.choice([None, *sorted(tokens)])
    if token is not None:
        headers["authorization"] = "Bearer " + tokens[token]
    request = support.check_request(
        path,
        method=rng.choice(["GET", "GETS"]),
        headers=headers,
        source=rng.choice(["", "spiffe://td/ns/a/sa/b"]),
    )
    meta = rng.choice([None, "gold", "golden", True, 1])
    if meta is not None:
        struct = struct_pb2.Struct()
        struct.update({"tier": meta})
        request.attributes.metadata_context.filter_metadata["acme"].CopyFrom(struct)
    return request


def _tokens() -> dict[str, str]:
    return {
        "admin": support.token(support.claims(role="admin", sub="ada")),
        "viewer": support.token(support.claims(role="viewer", sub="bob")),
        "no-sub": support.token(support.claims(role="admin", sub=None)),
    }


def _answer(checker: service.Checker, request: Any) -> bytes:
    response = asyncio.run(checker.check(request))
    response.dynamic_metadata.fields.pop("decision_id")
    return bytes(response.SerializeToString(deterministic=True))


def test_cached_decisions_equal_uncached_ones(tmp_path: pathlib.Path) -> None:
    cached, plain = _checker(tmp_path, True), _checker(tmp_path, False)
    rng = random.Random(7)
    tokens = _tokens()
    outcomes = set()
    for _ in range(1500):
        request = _random_request(rng, tokens)
        got, want = _answer(cached, request), _answer(plain, request)
        assert got == want, request
        outcomes.add(external_auth_pb2.CheckResponse.FromString(got).status.code)
    cache = cached._cache
    assert cache is not None
    assert cache.enabled
    assert cache.hits > 500  # keys repeat: the unread request id did not split them
    assert len(outcomes) > 1  # both allows and denies were compared


def test_unread_parts_do_not_split_keys_and_read_parts_do(tmp_path: pathlib.Path) -> None:
    checker = _checker(tmp_path, True)
    cache = checker._cache
    assert cache is not None
    first = support.check_request("/public", headers={"x-request-id": "1"})
    again = support.check_request("/public", headers={"x-request-id": "2", "x-other": "o"})
    post = support.check_request("/public", method="POST", headers={"x-request-id": "3"})
    for request in (first, again, post):
        asyncio.run(checker.check(request))
    assert (cache.hits, cache.misses) == (1, 2)


def test_cache_switches_itself_off_when_nothing_hits(tmp_path: pathlib.Path) -> None:
    rego = tmp_path / "every-header.rego"
    rego.write_text(
        "package envoy.authz\nimport rego.v1\n"
        "allow if { count(input.attributes.request.http.headers) > 0 }\n"
    )
    settings = support.settings(
        tmp_path,
        policy={"engine": "embedded", "modules": [str(rego)], "decision": "envoy/authz/allow"},
    )
    engine = policy.make_engine(settings.policy)
    cache = server.decision_cache(settings, engine)
    assert cache is not None
    authn = jwt_auth.Authenticator(settings.jwt)
    checker = service.Checker(
        settings, authn, engine, metrics.Metrics(), service.DecisionLog("off"), cache=cache
    )
    for i in range(decisioncache.DecisionCache.SAMPLE + 10):
        request = support.check_request("/public", headers={"x-request-id": str(i)})
        assert asyncio.run(checker.check(request)).status.code == 0
    assert not cache.enabled
    assert cache.hits == 0


def test_opa_engine_and_cache_entries_zero_never_cache(tmp_path: pathlib.Path) -> None:
    opa = support.settings(tmp_path, policy={"engine": "opa", "opa": {"url": "http://127.0.0.1:1"}})
    assert server.decision_cache(opa, policy.make_engine(opa.policy)) is None
    off = support.settings(
        tmp_path,
        policy={"engine": "embedded", "modules": [str(support.POLICY)], "cache_entries": 0},
    )
    assert server.decision_cache(off, policy.make_engine(off.policy)) is None


def test_cache_entries_is_validated(tmp_path: pathlib.Path) -> None:
    doc = support.base_config(tmp_path)
    doc["policy"]["cache_entries"] = -1
    with pytest.raises(config.ConfigError, match=r"policy\.cache_entries"):
        config.from_mapping(doc, tmp_path)


def test_route_decision_path_is_part_of_the_key(tmp_path: pathlib.Path) -> None:
    checker = _checker(tmp_path, True)
    allowed = support.check_request("/public")
    denied = support.check_request("/public")
    denied.attributes.context_extensions["decision"] = "envoy/authz/who"  # false: no token
    assert asyncio.run(checker.check(allowed)).status.code == 0
    assert asyncio.run(checker.check(denied)).status.code != 0


def test_view_tells_unset_from_empty_messages() -> None:
    unset = support.check_request("/a").attributes
    empty = support.check_request("/a").attributes
    empty.destination.address.SetInParent()
    path = ("attributes", "destination", "address")
    image = decisioncache.InputView(unset, {}).value(path)
    assert image == decisioncache.MISSING
    assert decisioncache.InputView(empty, {}).value(path) != image


def test_the_cache_is_bounded_by_bytes_as_well_as_entries() -> None:
    cache = decisioncache.DecisionCache((("parsed_path",),), max_entries=1000, max_bytes=64 * 1024)
    for i in range(100):
        cache.put(("d", (f"{i}:" + "v" * 4000,)), i)  # about 4.5 KB each
    assert cache.bytes <= 64 * 1024
    assert 10 <= len(cache._entries) < 16
    assert cache.get(("d", ("99:" + "v" * 4000,))) == 99  # the newest stay
    assert cache.get(("d", ("0:" + "v" * 4000,))) is None  # the oldest went first
    cache.put(("d", ("x" * 100_000,)), "huge")  # larger than the whole cache: not kept
    assert cache.bytes <= 64 * 1024
    assert cache.get(("d", ("x" * 100_000,))) is None
    cache.put(("d", ("99:" + "v" * 4000,)), "again")  # replacing does not count twice
    assert cache.bytes == sum(size for _value, size in cache._entries.values())

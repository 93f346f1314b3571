"""Unit checks of the IR → Envoy builders: references resolve, names invert, and the
Gateway API corner cases (redirect ports, prefix rewrites, bad input) come out right."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from tests import test_envoy_golden as goldens
from waypoint import model, names
from waypoint.envoy import bootstrap, clusters, listeners, options, resources, routes

CASES = goldens.CASES


def _walk(value: Any) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item, value
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _references(data: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Clusters and internal listeners that the config names somewhere."""
    cluster_refs: set[str] = set()
    listener_refs: set[str] = set()
    for key, item, parent in _walk(data):
        if key == "cluster" and isinstance(item, str):
            cluster_refs.add(item)
        elif key == "weighted_clusters":
            cluster_refs.update(c["name"] for c in item["clusters"])
        elif key == "server_listener_name":
            listener_refs.add(item)
        elif key == "cluster_name" and "endpoints" in parent:
            cluster_refs.add(item)
    return cluster_refs, listener_refs


@pytest.mark.parametrize("case", CASES)
def test_resources_are_sorted_and_self_contained(case: str) -> None:
    built = resources.build(goldens.load_case(case), goldens.OPTIONS)
    for kind in (built.listeners, built.clusters, built.secrets):
        assert [r.name for r in kind] == sorted(r.name for r in kind)
    data = bootstrap.to_dict(bootstrap.build(goldens.load_case(case), goldens.OPTIONS))
    cluster_refs, listener_refs = _references(data["static_resources"])
    assert cluster_refs - {c.name for c in built.clusters} <= {routes.UNRESOLVED_BACKEND}
    assert listener_refs <= {listener.name for listener in built.listeners}


@pytest.mark.parametrize("case", CASES)
def test_every_upstream_cluster_and_destination_is_built(case: str) -> None:
    waypoint = goldens.load_case(case)
    built = {c.name for c in resources.build(waypoint, goldens.OPTIONS).clusters}
    assert {c.name for c in waypoint.clusters} <= built
    inbound = {routes.inbound_name(d) for d in waypoint.destinations}
    if waypoint.proxy_port is None:
        assert inbound <= built
    else:  # the sandwich serves each destination in a filter chain of its own, no hop
        chains = {
            c.name for c in listeners.proxy_terminate(waypoint, goldens.OPTIONS).filter_chains
        }
        assert chains == inbound
        assert not inbound & built


@pytest.mark.parametrize("identity", [None, ("ns1", "reviews")])
def test_originate_names_invert(identity: tuple[str, str] | None) -> None:
    name = clusters.originate_name(identity)
    assert clusters.parse_originate_name(name) == identity


@pytest.mark.parametrize(
    "bad", ["connect_originate|ns1", "outbound|80||x", "connect_originate||sa"]
)
def test_originate_name_parse_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="connect_originate"):
        clusters.parse_originate_name(bad)


def test_endpoint_with_known_account_gets_its_own_origination() -> None:
    waypoint = goldens.load_case("hbone-upstream")
    built = resources.build(waypoint, goldens.OPTIONS)
    originate = [c for c in built.clusters if c.name.startswith(names.CONNECT_ORIGINATE)]
    assert [c.name for c in originate] == ["connect_originate|ns1|grpc"]
    listener_names = {listener.name for listener in built.listeners}
    assert "connect_originate|ns1|grpc" in listener_names


R = model.Redirect
PREFIX = model.PathModifierType.PREFIX


@pytest.mark.parametrize(
    ("redirect", "listener_port", "port", "scheme"),
    [
        (R(scheme="https"), 8080, 0, "https"),  # well-known port of the new scheme: omitted
        (R(scheme="http"), 8080, 0, "http"),
        (R(hostname="x.example"), 8080, 8080, ""),  # no scheme: the listener's port
        (R(hostname="x.example"), 80, 0, ""),  # ... unless it is the default one
        (R(scheme="https", port=443), 80, 0, "https"),
        (R(scheme="https", port=8443), 80, 8443, "https"),
        (R(port=80), 8080, 0, ""),
    ],
)
def test_redirect_port_follows_the_spec(
    redirect: model.Redirect, listener_port: int, port: int, scheme: str
) -> None:
    action = routes.redirect(redirect, None, listener_port)
    assert (action.port_redirect, action.scheme_redirect) == (port, scheme)


@pytest.mark.parametrize(
    ("match", "replacement", "prefix_rewrite", "regex"),
    [
        ("/foo", "/xyz", "/xyz", None),
        ("/foo/", "/xyz/", "/xyz", None),
        ("/foo", "/", None, ("^/foo/*", "/")),
        ("/", "/xyz", "/xyz/", None),
        ("/", "/", None, None),
    ],
)
def test_prefix_replacement_slash_rules(
    match: str, replacement: str, prefix_rewrite: str | None, regex: tuple[str, str] | None
) -> None:
    path = model.PathMatch(model.MatchType.PREFIX, match)
    got_prefix, got_regex = routes._prefix_replacement(path, replacement)
    assert got_prefix == prefix_rewrite
    got = None if got_regex is None else (got_regex.pattern.regex, got_regex.substitution)
    assert got == regex


def _destination(route: model.Route) -> model.Destination:
    return model.Destination(
        model.DestinationKind.SERVICE,
        "ns1",
        "echo",
        80,
        ("10.0.0.1",),
        model.Protocol.HTTP,
        "outbound|80||echo.ns1.svc.cluster.local",
        (route,),
    )


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (model.Route("r/a", model.RouteMatch(), redirect=R(status_code=305)), "redirect status"),
        (
            model.Route("r/b", model.RouteMatch(path=model.PathMatch(model.MatchType.PREFIX, "x"))),
            "must start with /",
        ),
        (model.Route("r/c", model.RouteMatch(), direct_status=99), "direct status"),
        (
            model.Route("r/d", model.RouteMatch(), mirrors=(model.Mirror("c", 120.0),)),
            "mirror percent",
        ),
    ],
)
def test_bad_routes_are_named_in_the_error(route: model.Route, message: str) -> None:
    with pytest.raises(ValueError, match=f"route {route.name}: .*{message}"):
        routes.route(route, _destination(route), "cluster.local")


def test_timeouts_map_to_route_and_per_try() -> None:
    base = model.Route("r/t", model.RouteMatch(), (model.WeightedBackend("c"),))
    plain = routes.route(base, _destination(base), "td")
    assert plain.route.timeout.ToSeconds() == 0  # no timeout unless asked
    both = dataclasses.replace(base, timeouts=model.Timeouts(request=10, backend_request=2.5))
    action = routes.route(both, _destination(both), "td").route
    assert action.timeout.ToMilliseconds() == 2500  # one try: the backend bound is the bound
    retried = dataclasses.replace(both, retry=model.Retry(2, (503,)))
    action = routes.route(retried, _destination(retried), "td").route
    assert action.timeout.ToMilliseconds() == 10_000
    assert action.retry_policy.per_try_timeout.ToMilliseconds() == 2500
    assert action.retry_policy.num_retries.value == 2
    assert list(action.retry_policy.retriable_status_codes) == [503]


def test_secrets_can_come_over_ads() -> None:
    opts = dataclasses.replace(goldens.OPTIONS, sds_over_ads=True)
    data = bootstrap.to_dict(bootstrap.build(goldens.load_case("service-default"), opts))
    sources = [item for key, item, _ in _walk(data) if key == "sds_config"]
    assert sources
    assert all(source == {"ads": {}, "resource_api_version": "V3"} for source in sources)


def test_node_defaults_to_the_waypoint_name() -> None:
    data = bootstrap.to_dict(bootstrap.build(goldens.load_case("service-default"), goldens.OPTIONS))
    assert data["node"] == {"cluster": "waypoint.ns1", "id": "waypoint.ns1"}
    named = options.BootstrapOptions(node_id="n1", cluster="c1")
    data = bootstrap.to_dict(bootstrap.build(goldens.load_case("service-default"), named))
    assert data["node"] == {"cluster": "c1", "id": "n1"}


def test_a_sandwich_chain_never_matches_a_port_on_every_address() -> None:
    waypoint = goldens.load_case("sandwich")
    bare = dataclasses.replace(waypoint.destinations[0], addresses=())
    waypoint = dataclasses.replace(waypoint, destinations=(bare, *waypoint.destinations[1:]))
    chains = listeners.proxy_terminate(waypoint, goldens.OPTIONS).filter_chains
    assert routes.inbound_name(bare) not in {c.name for c in chains}
    assert all(c.filter_chain_match.prefix_ranges for c in chains)

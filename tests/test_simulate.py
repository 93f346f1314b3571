"""The request simulator on hand-written worlds and the example world (no Envoy here).

``test_simulate_envoy.py`` checks the same semantics against a real Envoy; these tests pin
the details: route precedence, consumer routes, rewrites, redirects, TCP destinations,
HBONE and plain endpoints, and the matchers one by one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from tests import conftest
from waypoint import names, pipeline, simulate
from waypoint.envoy import bootstrap, options, resources
from waypoint.runtime import inputs
from waypoint.simulate import matching, rewriting

OPTIONS = options.BootstrapOptions()
EXAMPLE = conftest.REPO / "examples" / "local" / "world.yaml"
ECHO = "10.96.0.10:80"
API = "10.0.0.1:80"

# A shop namespace with a waypoint, a consumer namespace with its own route to shop/api, a
# legacy namespace outside the mesh (plain endpoints), and a TCP port.
SHOP = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: v1
kind: Namespace
metadata:
  name: client-a
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata:
  name: legacy
  labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: shop}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: waypoint
  listeners:
    - {name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.0.0.1
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: tcp-db, port: 5432, targetPort: 5432}
---
apiVersion: v1
kind: Service
metadata: {name: api-v2, namespace: shop}
spec:
  clusterIP: 10.0.0.2
  ports:
    - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: old, namespace: legacy}
spec:
  clusterIP: 10.0.0.3
  ports:
    - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  clusterIP: 10.0.0.8
  ports:
    - {name: http, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports:
  - {name: http, port: 8080, protocol: TCP}
  - {name: tcp-db, port: 5432, protocol: TCP}
endpoints:
  - {addresses: [10.1.0.1], conditions: {ready: true}}
  - {addresses: [10.1.0.9], conditions: {ready: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-v2-1, namespace: shop, labels: {kubernetes.io/service-name: api-v2}}
addressType: IPv4
ports:
  - {name: http, port: 8080, protocol: TCP}
endpoints:
  - {addresses: [10.1.0.2], conditions: {ready: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: old-1, namespace: legacy, labels: {kubernetes.io/service-name: old}}
addressType: IPv4
ports:
  - {name: http, port: 8080, protocol: TCP}
endpoints:
  - {addresses: [10.2.0.1], conditions: {ready: true}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /p}}]
      backendRefs: [{name: api, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /p}, method: POST}]
      backendRefs: [{name: api-v2, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /p/long}}]
      backendRefs: [{name: api-v2, port: 80}]
    - matches: [{path: {type: Exact, value: /p/exact}}]
      backendRefs: [{name: api-v2, port: 80}]
    - matches:
        - path: {type: RegularExpression, value: "/items/[0-9]+"}
          headers: [{name: x-user, type: RegularExpression, value: "a.*"}]
          queryParams: [{name: q, value: "a%20b"}]
      backendRefs: [{name: api-v2, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /gone}}]
      backendRefs: [{name: nowhere, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /host}}]
      filters:
        - type: URLRewrite
          urlRewrite:
            hostname: internal.example
            path: {type: ReplaceFullPath, replaceFullPath: /replaced}
      backendRefs: [{name: api, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /slow}}]
      timeouts: {request: 5s}
      retry: {attempts: 2, codes: [503]}
      backendRefs: [{name: api, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /moved}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, hostname: new.example, port: 8443, statusCode: 302}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-consumer, namespace: client-a}
spec:
  parentRefs: [{group: "", kind: Service, name: api, namespace: shop, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /consumer}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {add: [{name: x-consumer, value: a}], remove: [x-drop]}
      backendRefs:
        - name: api-v2
          namespace: shop
          port: 80
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-backend, value: v2}]}
"""


def _resources(objects: Sequence[dict[str, Any]], namespace: str) -> resources.Resources:
    rendered = pipeline.render(objects, namespace, "waypoint", OPTIONS)
    return resources.build(rendered.waypoint, OPTIONS)


@pytest.fixture(scope="module")
def example() -> resources.Resources:
    return _resources(inputs.load_objects([EXAMPLE]), "demo")


@pytest.fixture(scope="module")
def shop() -> resources.Resources:
    return _resources([d for d in yaml.safe_load_all(SHOP) if d], "shop")


def _who(namespace: str, account: str = "client") -> str:
    return names.spiffe_id(OPTIONS.trust_domain, namespace, account)


def _route(trace: simulate.Trace) -> tuple[str, str]:
    ref = trace.route_ref
    assert ref is not None, trace
    return ref.name, ref.rule


# --- the example world -------------------------------------------------------------------


def test_example_catch_all_is_a_weighted_canary(example: resources.Resources) -> None:
    trace = simulate.trace(example, simulate.Request(ECHO, source_principal=_who("demo")))
    assert trace.connect.route == ECHO
    assert trace.connect.cluster == trace.listener == "inbound-vip|80|echo.demo.svc.cluster.local"
    assert trace.protocol == "http"
    assert trace.route == "httproute/demo/echo/3/0"
    assert [(c.name, c.matched) for c in trace.checks] == [
        ("httproute/demo/echo/1/0", False),
        ("httproute/demo/echo/2/0", False),
        ("httproute/demo/echo/0/0", False),
        ("httproute/demo/echo/3/0", True),
    ]
    assert trace.checks[2].reason == "header x-version is absent"
    assert trace.action is not None
    shares = [(u.cluster, u.weight, u.share) for u in trace.action.upstreams]
    assert shares == [
        ("outbound|80||echo-v1.demo.svc.cluster.local", 80, 0.8),
        ("outbound|80||echo-v2.demo.svc.cluster.local", 20, 0.2),
    ]
    assert trace.action.response_header_changes == ("add x-canary: true",)
    assert trace.status is None
    endpoint = trace.action.upstreams[0].endpoints[0]
    assert endpoint == simulate.Endpoint(
        "127.0.10.1:8080",
        hbone=True,
        via="connect_originate|demo|echo",
        tunnel_to="127.0.10.1:15008",
        peer="spiffe://cluster.local/ns/demo/sa/echo",
    )


def test_example_header_override(example: resources.Resources) -> None:
    request = simulate.Request(ECHO, headers=(("X-Version", "v2"),))
    trace = simulate.trace(example, request)
    assert trace.route == "httproute/demo/echo/0/0"
    assert trace.clusters == ("outbound|80||echo-v2.demo.svc.cluster.local",)


def test_example_rewrite_and_header(example: resources.Resources) -> None:
    request = simulate.Request(ECHO, path="/api/users?page=2", host="echo.demo")
    trace = simulate.trace(example, request)
    assert trace.route == "httproute/demo/echo/2/0"
    assert trace.action is not None
    assert trace.action.path_rewrite == "/v1/api/users?page=2"
    assert trace.action.header_changes == ("set x-routed-by: waypoint",)
    forwarded = trace.action.upstreams[0].request
    assert forwarded == simulate.Forwarded(
        "/v1/api/users?page=2", "echo.demo", (("x-routed-by", "waypoint"),)
    )


def test_example_redirect_location(example: resources.Resources) -> None:
    request = simulate.Request(ECHO, path="/old/a/b?x=1", host="echo.demo:80")
    trace = simulate.trace(example, request)
    assert trace.route == "httproute/demo/echo/1/0"
    assert trace.action is not None
    assert trace.action.kind == "redirect"
    assert (trace.status, trace.action.location) == (301, "http://echo.demo/new/a/b?x=1")
    assert trace.clusters == ()


def test_bootstrap_and_resources_trace_alike(example: resources.Resources) -> None:
    rendered = pipeline.render(inputs.load_objects([EXAMPLE]), "demo", "waypoint", OPTIONS)
    boot = bootstrap.build(rendered.waypoint, OPTIONS)
    for request in (
        simulate.Request(ECHO, path="/api/x"),
        simulate.Request(ECHO, path="/old"),
        simulate.Request("10.96.0.11:80"),
    ):
        assert simulate.trace(boot, request) == simulate.trace(example, request)


def test_trace_to_dict_is_json(example: resources.Resources) -> None:
    data = simulate.trace(example, simulate.Request(ECHO)).to_dict()
    assert json.loads(json.dumps(data))["route_ref"] == {
        "kind": "httproute",
        "namespace": "demo",
        "name": "echo",
        "rule": "3",
        "match": 0,
    }


# --- precedence and matchers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("GET", "/p/exact", "3"),  # Exact beats every prefix
        ("GET", "/p/long/x", "2"),  # the longest prefix next
        ("POST", "/p/x", "1"),  # then a method match
        ("GET", "/p/x", "0"),
        ("GET", "/p", "0"),
        ("GET", "/p/long", "2"),
        ("GET", "/p/exact/more", "0"),  # exact means exact
        ("GET", "/p/./long/x", "2"),  # normalised before matching
        ("GET", "/x/../p/exact", "3"),
    ],
)
def test_precedence(shop: resources.Resources, method: str, path: str, rule: str) -> None:
    trace = simulate.trace(shop, simulate.Request(API, method, path, source_principal=_who("shop")))
    assert _route(trace) == ("api", rule)


def test_path_separated_prefix_does_not_match_longer_segment(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request(API, path="/pp"))
    assert (trace.route, trace.status) == (None, 404)
    assert trace.checks
    assert all(not c.matched for c in trace.checks)
    reasons = {c.name: c.reason for c in trace.checks}
    assert "path-separated prefix '/p'" in reasons["httproute/shop/api/0/0"]


@pytest.mark.parametrize(
    ("path", "user", "matched"),
    [
        ("/items/12?q=a%20b", "abc", True),
        ("/items/12?x=1&q=a%20b", "a", True),
        ("/items/12?q=a+b", "abc", False),  # query values are compared as sent
        ("/items/12?q=a%20b", "babc", False),  # regexes match the whole value
        ("/items/12x?q=a%20b", "abc", False),
        ("/items/12?q=a%20b", None, False),
    ],
)
def test_regex_header_and_query(
    shop: resources.Resources, path: str, user: str | None, matched: bool
) -> None:
    headers = (("x-user", user),) if user is not None else ()
    trace = simulate.trace(shop, simulate.Request(API, path=path, headers=headers))
    assert (trace.route == "httproute/shop/api/4/0") is matched


def test_fragment_is_rejected(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request(API, path="/p#x"))
    assert (trace.status, trace.route, trace.rejected) == (400, None, "the path has a fragment (#)")


# --- consumer routes ---------------------------------------------------------------------


def test_consumer_route_for_its_namespace(shop: resources.Resources) -> None:
    request = simulate.Request(
        API,
        path="/consumer/x",
        headers=(("x-drop", "1"), ("x-keep", "2")),
        source_principal=_who("client-a", "any"),
    )
    trace = simulate.trace(shop, request)
    assert _route(trace) == ("api-consumer", "0")
    assert trace.action is not None
    assert trace.action.header_changes == ("remove x-drop", "add x-consumer: a")
    (upstream,) = trace.action.upstreams
    assert upstream.cluster == "outbound|80||api-v2.shop.svc.cluster.local"
    assert upstream.header_changes == ("set x-backend: v2",)
    assert upstream.request is not None
    assert upstream.request.headers == (("x-keep", "2"), ("x-backend", "v2"), ("x-consumer", "a"))


def test_consumer_namespace_gets_404_for_other_paths(shop: resources.Resources) -> None:
    trace = simulate.trace(
        shop, simulate.Request(API, path="/p", source_principal=_who("client-a"))
    )
    assert trace.route == "consumer-default/client-a/api/80/0"
    assert trace.action is not None
    assert trace.action.kind == "direct_response"
    assert trace.status == 404


@pytest.mark.parametrize("principal", [_who("shop"), _who("client-b"), None])
def test_other_clients_get_producer_routes(
    shop: resources.Resources, principal: str | None
) -> None:
    trace = simulate.trace(
        shop, simulate.Request(API, path="/consumer", source_principal=principal)
    )
    assert (trace.route, trace.status) == (None, 404)  # no producer rule for /consumer
    consumer = [c for c in trace.checks if c.name.startswith("httproute/client-a/")]
    assert consumer
    assert not consumer[0].matched
    assert "filter state io.waypoint.source_principal" in consumer[0].reason
    trace = simulate.trace(shop, simulate.Request(API, path="/p", source_principal=principal))
    assert _route(trace) == ("api", "0")


# --- actions -------------------------------------------------------------------------------


def test_unresolved_backend_is_a_500(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request(API, path="/gone"))
    assert _route(trace) == ("api", "5")
    assert trace.action is not None
    assert trace.action.kind == "direct_response"
    assert trace.status == 500


def test_no_endpoints_is_a_503(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request("10.0.0.8:80"))
    assert trace.route == "default/shop/empty/80"
    assert trace.action is not None
    (upstream,) = trace.action.upstreams
    assert (upstream.exists, upstream.endpoints, trace.status) == (True, (), 503)


def test_missing_cluster_is_the_not_found_code(shop: resources.Resources) -> None:
    gone = "outbound|80||api.shop.svc.cluster.local"
    pruned = dataclasses.replace(shop, clusters=tuple(c for c in shop.clusters if c.name != gone))
    trace = simulate.trace(pruned, simulate.Request(API, path="/p"))
    assert trace.action is not None
    assert [(u.cluster, u.exists) for u in trace.action.upstreams] == [(gone, False)]
    assert trace.status == 503
    inbound = "inbound-vip|80|api.shop.svc.cluster.local"
    broken = dataclasses.replace(
        shop, clusters=tuple(c for c in shop.clusters if c.name != inbound)
    )
    with pytest.raises(simulate.ConfigError, match="inbound-vip"):
        simulate.trace(broken, simulate.Request(API))


def test_host_and_full_path_rewrite_keep_the_query(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request(API, path="/host/a/b?y=1", host="api.shop"))
    assert trace.action is not None
    assert (trace.action.path_rewrite, trace.action.host_rewrite) == (
        "/replaced?y=1",
        "internal.example",
    )
    assert trace.action.upstreams[0].request == simulate.Forwarded(
        "/replaced?y=1", "internal.example", ()
    )


def test_timeout_and_retry_are_listed(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request(API, path="/slow"))
    assert trace.action is not None
    assert (trace.action.timeout_seconds, trace.action.retry) == (
        5.0,
        "2 retries on connect-failure,refused-stream,reset,retriable-status-codes",
    )
    plain = simulate.trace(shop, simulate.Request(API, path="/p"))
    assert plain.action is not None
    assert (plain.action.timeout_seconds, plain.action.retry) == (None, None)


def test_redirect_with_scheme_host_and_port(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request(API, path="/moved/x?z=1", host="api.shop:80"))
    assert trace.action is not None
    assert (trace.status, trace.action.location) == (302, "https://new.example:8443/moved/x?z=1")


# --- hops and endpoints ----------------------------------------------------------------------


def test_unknown_authority_is_a_connect_404(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request("10.0.0.99:80"))
    assert (trace.connect.status, trace.connect.cluster, trace.listener) == (404, None, None)
    assert trace.status == 404
    assert "10.0.0.99:80" in trace.connect.reason
    # The authority's port counts: the Service's VIP on a port it does not have.
    assert simulate.trace(shop, simulate.Request("10.0.0.1:81")).connect.status == 404


def test_foreign_trust_domain_is_refused(shop: resources.Resources) -> None:
    request = simulate.Request(API, source_principal="spiffe://elsewhere/ns/a/sa/b")
    trace = simulate.trace(shop, request)
    assert not trace.connect.peer_accepted
    assert (trace.connect.status, trace.listener, trace.status) == (0, None, None)
    assert "spiffe://cluster.local/" in trace.connect.reason


def test_tcp_destination(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request("10.0.0.1:5432", path="/ignored"))
    assert (trace.listener, trace.protocol) == (
        "inbound-vip|5432|api.shop.svc.cluster.local",
        "tcp",
    )
    assert trace.route is None
    assert trace.checks == ()
    assert trace.action is not None
    assert trace.action.kind == "tcp_proxy"
    (upstream,) = trace.action.upstreams
    assert upstream.cluster == names.outbound_cluster(names.HostRef("svc", "shop", "api"), 5432)
    # Only the ready endpoint; no identity known, so any peer in the trust domain.
    assert upstream.endpoints == (
        simulate.Endpoint(
            "10.1.0.1:5432",
            hbone=True,
            via="connect_originate",
            tunnel_to="10.1.0.1:15008",
            peer="spiffe://cluster.local/*",
        ),
    )
    assert upstream.request is None


def test_plain_endpoints_outside_the_mesh(shop: resources.Resources) -> None:
    trace = simulate.trace(shop, simulate.Request("10.0.0.3:80"))
    assert trace.route == "default/legacy/old/80"
    assert trace.route_ref is None
    assert trace.action is not None
    assert trace.action.upstreams[0].endpoints == (simulate.Endpoint("10.2.0.1:8080"),)


# --- the matchers one by one -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../a", "/a"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/%61%2f%7E", "/a%2F~"),
        ("/a/%2e%2E/b", "/b"),
        ("//a//b", "//a//b"),
        ("/a/../b?x=/../y", "/b?x=/../y"),
    ],
)
def test_normalize_path(raw: str, normalized: str) -> None:
    assert matching.normalize_path(raw) == normalized


def test_strip_port() -> None:
    assert matching.strip_port("a.b:80") == "a.b"
    assert matching.strip_port("[::1]:80") == "[::1]"
    assert matching.strip_port("a.b") == "a.b"


def test_virtual_host_ranking() -> None:
    hosts = [
        rc_pb2.VirtualHost(name="any", domains=["*"]),
        rc_pb2.VirtualHost(name="prefix", domains=["api.*"]),
        rc_pb2.VirtualHost(name="suffix", domains=["*.example"]),
        rc_pb2.VirtualHost(name="exact", domains=["api.example"]),
    ]

    def pick(host: str) -> str | None:
        found = matching.virtual_host(hosts, host)
        return found.name if found is not None else None

    assert pick("api.example") == "exact"
    assert pick("www.example") == "suffix"
    assert pick("api.local") == "prefix"
    assert pick("other") == "any"
    assert matching.virtual_host(hosts[1:], "other") is None


def test_header_matchers() -> None:
    headers = (("x-a", "1"), ("X-A", "2"), ("x-b", "B"))
    exact = string_pb2.StringMatcher(exact="1,2")
    assert (
        matching.header_matcher(rc_pb2.HeaderMatcher(name="x-a", string_match=exact), headers)
        is None
    )
    inverted = rc_pb2.HeaderMatcher(name="x-c", string_match=exact, invert_match=True)
    assert matching.header_matcher(inverted, headers) is None
    absent = rc_pb2.HeaderMatcher(name="x-c", present_match=False)
    assert matching.header_matcher(absent, headers) is None
    present = rc_pb2.HeaderMatcher(name="x-c", present_match=True)
    assert matching.header_matcher(present, headers) == "header x-c=None is not present"
    nocase = string_pb2.StringMatcher(exact="b", ignore_case=True)
    assert (
        matching.header_matcher(rc_pb2.HeaderMatcher(name="x-b", string_match=nocase), headers)
        is None
    )


def test_unsupported_match_is_named() -> None:
    match = rc_pb2.RouteMatch(prefix="/")
    match.runtime_fraction.default_value.numerator = 50
    with pytest.raises(matching.UnsupportedConfig, match="runtime_fraction"):
        matching.route_matcher(match, "GET", "/", (), {})
    with pytest.raises(matching.UnsupportedConfig, match="regex"):
        matching.compile_regex("a(?<=b)(")


def test_regex_substitution_groups_and_query() -> None:
    rewrite = regex_pb2.RegexMatchAndSubstitute(
        pattern=regex_pb2.RegexMatcher(regex="^/v([0-9]+)/(.*)$"), substitution="/\\2/version\\1"
    )
    assert rewriting.regex_substitute(rewrite, "/v3/items?x=/v1/a") == "/items/version3?x=/v1/a"


def test_location_path_redirect_and_strip_query() -> None:
    match = rc_pb2.RouteMatch(prefix="/")
    keep = rc_pb2.RedirectAction(path_redirect="/new")
    assert rewriting.location(keep, match, "h", "/old?a=1") == "http://h/new?a=1"
    own = rc_pb2.RedirectAction(path_redirect="/new?b=2")
    assert rewriting.location(own, match, "h", "/old?a=1") == "http://h/new?b=2"
    strip = rc_pb2.RedirectAction(https_redirect=True, strip_query=True, port_redirect=9)
    assert rewriting.location(strip, match, "h", "/old?a=1") == "https://h:9/old"


def test_header_mutation_actions() -> None:
    def option(name: str, value: str, action: int) -> base_pb2.HeaderValueOption:
        return base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value), append_action=action
        )

    opts = base_pb2.HeaderValueOption
    headers = (("a", "1"), ("b", "1"))
    mutations = [
        option("A", "2", opts.APPEND_IF_EXISTS_OR_ADD),
        option("b", "2", opts.ADD_IF_ABSENT),
        option("c", "3", opts.ADD_IF_ABSENT),
        option("d", "4", opts.OVERWRITE_IF_EXISTS),
        option("b", "5", opts.OVERWRITE_IF_EXISTS),
    ]
    assert rewriting.mutate(headers, mutations, ["x"]) == (
        ("a", "1"),
        ("a", "2"),
        ("c", "3"),
        ("b", "5"),
    )
    legacy = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="a", value="9"))
    legacy.append.value = False
    assert rewriting.mutate(headers, [legacy], ["b"]) == (("a", "9"),)

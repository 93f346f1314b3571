"""TrafficPolicy and observability through a real Envoy: one Envoy for the whole module.

Rate limiting answers 429 past the budget; injected aborts come back at their percentage;
a policy mirror reaches the mirror; outlier detection ejects an endpoint that keeps failing;
consistent hashing keeps a user on one endpoint; per-route stats reach the Prometheus port;
request ids and trace context pass through untouched; ext_authz's failure mode decides
when extauthz cannot be reached.
"""

from __future__ import annotations

import collections
import dataclasses
import http.server
import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests import conftest
from waypoint import model, names
from waypoint.envoy import bootstrap, filters, options
from waypoint.local import ca as dev_ca
from waypoint.local import echo
from waypoint.local.hbone import client as hbone_client
from waypoint.runtime import envoy_process, sds

TD = "cluster.local"
VIP = "10.96.1.10"
ECHO = names.authority(VIP, 80)
M = model.MatchType


def _cluster_name(name: str) -> str:
    return names.outbound_cluster(names.HostRef("svc", "ns1", name), 80)


V1, V2, FLAKY, PAIR = (_cluster_name(n) for n in ("v1", "v2", "flaky", "pair"))


def _route(rule: str, prefix: str, cluster: str = V1, **kwargs: object) -> model.Route:
    return model.Route(
        name=names.route_name("HTTPRoute", "ns1", "echo", rule, 0),
        match=model.RouteMatch(path=model.PathMatch(M.PREFIX, prefix)),
        backends=(model.WeightedBackend(cluster),),
        **kwargs,  # type: ignore[arg-type]
    )


def _policy(**kwargs: object) -> model.RoutePolicy:
    return model.RoutePolicy(sources=("TrafficPolicy/ns1/test",), **kwargs)  # type: ignore[arg-type]


def _abort(status: int, percent: float) -> model.RoutePolicy:
    return _policy(fault=model.FaultInjection(abort_status=status, abort_percent=percent))


def _authz(mode: model.FailureMode) -> model.ExtAuthz:
    return model.ExtAuthz("ns1/test", "envoy/authz/allow", mode, timeout=1.0)


ROUTES = (
    _route(
        "limited",
        "/limited",
        policy=_policy(rate_limit=model.LocalRateLimit(tokens=3, fill_interval=3600)),
    ),
    _route("abortall", "/abort-all", policy=_abort(503, 100)),
    _route("abortnone", "/abort-none", policy=_abort(503, 0)),
    _route("aborthalf", "/abort-half", policy=_abort(418, 50)),
    _route(
        "delayed",
        "/delayed",
        policy=_policy(fault=model.FaultInjection(delay=0.05, delay_percent=100)),
    ),
    _route("mirror", "/mirror", mirrors=(model.Mirror(V2),), policy=_policy()),
    _route("flaky", "/flaky", FLAKY),
    # No extauthz listens at the configured address: the failure mode decides.
    _route("authzopen", "/authz-open", policy=_policy(authz=_authz(model.FailureMode.OPEN))),
    _route("authzclosed", "/authz-closed", policy=_policy(authz=_authz(model.FailureMode.CLOSED))),
    _route("pair", "/pair", PAIR),
    _route("plain", "/", V1),
)


def _ep(port: int) -> model.Endpoint:
    return model.Endpoint("127.0.0.1", port)


def _waypoint(ports: dict[str, int]) -> model.Waypoint:
    outlier = model.ClusterPolicy(
        outlier_detection=model.OutlierDetection(
            consecutive_5xx=2, interval=1.0, base_ejection_time=300.0, max_ejection_percent=50
        ),
        sources=("TrafficPolicy/ns1/flaky",),
    )
    hashed = model.ClusterPolicy(
        load_balancer=model.LoadBalancer(model.LoadBalancerType.CONSISTENT_HASH, "x-user"),
        circuit_breaker=model.CircuitBreaker(max_connections=100, max_pending_requests=100),
    )
    http = model.Protocol.HTTP

    def cluster(
        name: str, endpoints: tuple[model.Endpoint, ...], policy: model.ClusterPolicy | None = None
    ) -> model.Cluster:
        return model.Cluster(_cluster_name(name), http, endpoints, "ns1", name, 80, policy)

    clusters = (
        cluster("v1", (_ep(ports["v1"]),)),
        cluster("v2", (_ep(ports["v2"]),)),
        cluster("flaky", (_ep(ports["v1"]), _ep(ports["failing"])), outlier),
        cluster("pair", (_ep(ports["v1"]), _ep(ports["v2"])), hashed),
    )
    dest = model.Destination(
        model.DestinationKind.SERVICE, "ns1", "echo", 80, (VIP,), http, V1, ROUTES
    )
    return model.Waypoint(
        "ns1",
        "waypoint",
        model.TrafficType.SERVICE,
        model.WaypointIdentity(TD, "ns1", "waypoint"),
        None,
        (dest,),
        tuple(sorted(clusters, key=lambda c: c.name)),
    )


class _Failing(http.server.BaseHTTPRequestHandler):
    """An endpoint that always fails: what outlier detection must take out of rotation."""

    def do_GET(self) -> None:
        body = b"always failing\n"
        self.send_response(500)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@dataclasses.dataclass
class World:
    opts: options.BootstrapOptions
    proxy: envoy_process.EnvoyProcess
    ca: dev_ca.CertificateAuthority
    echoes: dict[str, echo.EchoServer]
    failing: http.server.ThreadingHTTPServer

    def client(self) -> hbone_client.SyncHboneClient:
        ident = self.ca.issue_workload("client", "sleep")
        return hbone_client.SyncHboneClient(
            ("127.0.0.1", self.opts.hbone_port),
            ident.ssl_context(server=False),
            expected_trust_domain=TD,
            timeout=10.0,
        )

    def statuses(self, path: str, count: int, **kw: object) -> list[int]:
        with self.client() as hbone:
            return [hbone.request(ECHO, path=path, **kw).status for _ in range(count)]  # type: ignore[arg-type]

    def stat(self, name: str) -> int:
        return self.proxy.counter(name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("policy-traffic")
    ca = dev_ca.CertificateAuthority.create(TD)
    ca.issue_workload("ns1", "waypoint").write(tmp / "certs")
    opts = conftest.loopback_options(
        trust_domain=TD,
        cert_dir=str(tmp / "certs"),
        sds_dir=str(tmp / "sds"),
        hbone_port=conftest.free_port(),
        extauthz_address=f"127.0.0.1:{conftest.free_port()}",  # nothing listens there
    )
    echoes = {
        "v1": echo.EchoServer("v1", "ns1", http_ports=(0,), version="v1"),
        "v2": echo.EchoServer("v2", "ns1", http_ports=(0,), version="v2"),
    }
    failing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=failing.serve_forever, daemon=True)
    thread.start()
    started: list[echo.EchoServer] = []
    try:
        for server in echoes.values():
            server.start_background()
            started.append(server)
        ports = {name: server.http_ports[0] for name, server in echoes.items()}
        ports["failing"] = failing.server_address[1]
        sds.write_files(opts)
        config = tmp / "envoy.yaml"
        config.write_text(bootstrap.to_yaml(bootstrap.build(_waypoint(ports), opts)))
        envoy_process.validate(config)
        with envoy_process.running(config, opts.admin_port, tmp / "envoy.log") as proxy:
            yield World(opts, proxy, ca, echoes, failing)
    finally:
        failing.shutdown()
        failing.server_close()
        for server in reversed(started):
            server.stop_background()


def test_local_rate_limit_answers_429_past_the_budget(world: World) -> None:
    assert world.statuses("/limited", 5) == [200, 200, 200, 429, 429]
    # The bucket is per route: other routes are untouched.
    assert world.statuses("/plain", 3) == [200, 200, 200]


def test_ext_authz_failure_modes_when_extauthz_is_down(world: World) -> None:
    assert world.statuses("/authz-open", 2) == [200, 200]
    assert world.statuses("/authz-closed", 2) == [503, 503]


def test_abort_at_100_and_0_percent(world: World) -> None:
    assert set(world.statuses("/abort-all", 10)) == {503}
    assert set(world.statuses("/abort-none", 10)) == {200}


def test_abort_at_50_percent_is_roughly_half(world: World) -> None:
    seen = collections.Counter(world.statuses("/abort-half", 200))
    assert set(seen) == {200, 418}
    # Binomial(200, 0.5): outside 60..140 has a probability below 1e-8.
    assert 60 <= seen[418] <= 140, seen


def test_delay_fault_still_answers(world: World) -> None:
    before = world.stat("http.inbound-vip_80_echo_ns1_svc_cluster_local.fault.delays_injected")
    assert world.statuses("/delayed", 2) == [200, 200]
    after = world.stat("http.inbound-vip_80_echo_ns1_svc_cluster_local.fault.delays_injected")
    assert after == before + 2


def test_mirror_reaches_the_mirror(world: World) -> None:
    mirror = world.echoes["v2"]
    before = mirror.requests_served
    assert world.statuses("/mirror", 3) == [200, 200, 200]
    deadline = time.monotonic() + 10
    while mirror.requests_served < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mirror.requests_served == before + 3


def test_outlier_detection_ejects_the_failing_endpoint(world: World) -> None:
    first = world.statuses("/flaky", 10)
    assert 500 in first  # the failing endpoint was in rotation
    assert world.stat(f"cluster.{FLAKY}.outlier_detection.ejections_enforced_total") >= 1
    assert world.statuses("/flaky", 20) == [200] * 20


def test_consistent_hash_keeps_a_user_on_one_endpoint(world: World) -> None:
    served: dict[str, set[str]] = collections.defaultdict(set)
    with world.client() as hbone:
        for user in range(12):
            for _ in range(4):
                resp = hbone.request(ECHO, path="/pair", headers=[("x-user", f"user-{user}")])
                served[f"user-{user}"].add(echo.parse_echo(resp.body).hostname)
    assert all(len(hosts) == 1 for hosts in served.values()), served
    assert set().union(*served.values()) == {"v1", "v2"}  # and users spread over both


def test_request_id_and_trace_context_pass_through(world: World) -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with world.client() as hbone:
        resp = hbone.request(
            ECHO, path="/plain", headers=[("x-request-id", "req-42"), ("traceparent", trace)]
        )
    report = echo.parse_echo(resp.body)
    assert report.header("x-request-id") == "req-42"
    assert report.header("traceparent") == trace


def _labels(route: str) -> str:
    vhost = filters.stat_prefix(names.inbound_listener(names.HostRef("svc", "ns1", "echo"), 80))
    route_tag = filters.stat_prefix(names.route_name("HTTPRoute", "ns1", "echo", route, 0))
    return f'envoy_virtual_host="{vhost}",envoy_route="{route_tag}"'


def test_per_route_red_metrics_on_the_prometheus_port(world: World) -> None:
    """Rate, errors and duration per route, under fixed metric names with route labels."""
    assert world.statuses("/plain", 2) == [200, 200]
    world.statuses("/flaky", 1)
    plain, flaky = _labels("plain"), _labels("flaky")
    expected = [
        f'envoy_vhost_route_upstream_rq{{envoy_response_code="200",{plain}}}',
        f"envoy_vhost_route_upstream_rq_completed{{{plain}}}",
        f'envoy_vhost_route_upstream_rq_time_bucket{{{plain},le="+Inf"}}',
        f"envoy_vhost_route_upstream_rq_time_count{{{plain}}}",
        f'envoy_vhost_route_upstream_rq{{envoy_response_code="500",{flaky}}}',
    ]
    # Histograms reach the stats sink at Envoy's flush interval (5 s): wait for one flush.
    deadline = time.monotonic() + 20
    while True:
        values = _series(world, expected)
        if all(v >= 1 for v in values.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(v >= 1 for v in values.values()), values


def _series(world: World, wanted: list[str]) -> dict[str, float]:
    url = f"http://127.0.0.1:{world.opts.stats_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    out = {}
    for series in wanted:
        found = [line for line in lines if line.startswith(series + " ")]
        out[series] = float(found[0].rsplit(" ", 1)[1]) if found else -1.0
    return out


def test_access_log_shows_route_and_rate_limit_flag(world: World) -> None:
    assert world.statuses("/limited", 1) == [429]
    deadline = time.monotonic() + 10
    wanted = '"route_name":"httproute/ns1/echo/limited/0"'
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in world.proxy.log().splitlines() if wanted in line]
        if any(entry["response_code"] == 429 for entry in lines):
            break
        time.sleep(0.1)
    limited = [entry for entry in lines if entry["response_code"] == 429]
    assert limited
    assert limited[-1]["response_flags"] == "RL"

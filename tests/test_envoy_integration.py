"""The generated config through a real Envoy: HBONE in, L7 routing, HBONE out, mTLS checks.

One Envoy serves the whole module (its start-up dominates the cost); each test sends its
own HBONE traffic with the project's client to echo backends and a destination-side HBONE
terminator, all on loopback.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import pathlib
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator

import pytest
from cryptography import x509

from tests import conftest
from waypoint import model, names, pki
from waypoint.envoy import bootstrap, options
from waypoint.local import ca as dev_ca
from waypoint.local import echo
from waypoint.local.hbone import client as hbone_client
from waypoint.local.hbone import echo_pb2, errors, grpcwire
from waypoint.local.hbone import terminator as hbone_terminator
from waypoint.runtime import envoy_process, sds

TD = "cluster.local"
ECHO_VIP = "10.96.0.10"
WEB_VIP = "10.96.0.11"
DB_VIP = "10.96.0.12"
MESH_VIP = "10.96.0.13"
ROGUE_VIP = "10.96.0.14"
ECHO = names.authority(ECHO_VIP, 80)
WEB = names.authority(WEB_VIP, 8080)
DB = names.authority(DB_VIP, 5432)
MESH = names.authority(MESH_VIP, 80)
ROGUE = names.authority(ROGUE_VIP, 80)
IMPOSTOR_VIP = "10.96.0.15"
IMPOSTOR = names.authority(IMPOSTOR_VIP, 80)
GRPC_VIP = "10.96.0.16"
GRPC = names.authority(GRPC_VIP, 9000)
M = model.MatchType


def _svc_cluster(name: str, port: int) -> str:
    return names.outbound_cluster(names.HostRef("svc", "ns1", name), port)


def _route(rule: str, prefix: str, **kwargs: object) -> model.Route:
    return model.Route(
        name=names.route_name("HTTPRoute", "ns1", "echo", rule, 0),
        match=model.RouteMatch(path=model.PathMatch(M.PREFIX, prefix)),
        **kwargs,  # type: ignore[arg-type]
    )


def _to(cluster: str, weight: int = 1, **kwargs: object) -> model.WeightedBackend:
    return model.WeightedBackend(cluster, weight, **kwargs)  # type: ignore[arg-type]


@dataclasses.dataclass
class World:
    opts: options.BootstrapOptions
    proxy: envoy_process.EnvoyProcess
    ca: dev_ca.CertificateAuthority
    cert_dir: pathlib.Path
    echoes: dict[str, echo.EchoServer]
    terminators: dict[str, hbone_terminator.HboneTerminator]

    def client(self, namespace: str = "sleep") -> hbone_client.SyncHboneClient:
        ident = self.ca.issue_workload(namespace, "sleep")
        return hbone_client.SyncHboneClient(
            ("127.0.0.1", self.opts.hbone_port),
            ident.ssl_context(server=False),
            expected_trust_domain=TD,
            timeout=10.0,
        )

    def get(
        self, authority: str, path: str, namespace: str = "sleep", **kw: object
    ) -> hbone_client.Response:
        with self.client(namespace) as hbone:
            return hbone.request(authority, path=path, **kw)  # type: ignore[arg-type]

    def stat(self, name: str) -> int:
        return self.proxy.counter(name)


def _echo_routes() -> tuple[model.Route, ...]:
    v1, v2 = _svc_cluster("v1", 80), _svc_cluster("v2", 80)
    hdr = model.Header
    prefix, full = model.PathModifierType.PREFIX, model.PathModifierType.FULL
    match = model.RouteMatch(
        path=model.PathMatch(M.REGEX, "/match/[a-z]+"),
        headers=(model.ValueMatch("x-v", "2"),),
        query=(model.ValueMatch("q", "[0-9]+", M.REGEX),),
        method="POST",
    )
    return (
        _route("consumer", "/who", backends=(_to(v2),), consumer_namespace="client"),
        _route("who", "/who", backends=(_to(v1),)),
        model.Route(names.route_name("HTTPRoute", "ns1", "echo", "match", 0), match, (_to(v2),)),
        _route("split", "/split", backends=(_to(v1), _to(v2))),
        _route(
            "headers",
            "/headers",
            backends=(
                _to(v1, request_headers=model.HeaderModifier(set=(hdr("x-backend", "v1"),))),
            ),
            request_headers=model.HeaderModifier(
                set=(hdr("x-set", "new"),), add=(hdr("x-add", "more"),), remove=("x-remove",)
            ),
            response_headers=model.HeaderModifier(
                set=(hdr("x-resp-set", "yes"),), add=(hdr("x-resp-add", "also"),)
            ),
        ),
        _route(
            "rewrite",
            "/rewrite",
            backends=(_to(v1),),
            rewrite=model.Rewrite("rewritten.example", model.PathModifier(prefix, "/")),
        ),
        _route(
            "prefix",
            "/prefix/one",
            backends=(_to(v1),),
            rewrite=model.Rewrite(path=model.PathModifier(prefix, "/one")),
        ),
        _route(
            "full",
            "/full",
            backends=(_to(v1),),
            rewrite=model.Rewrite(path=model.PathModifier(full, "/whole")),
        ),
        _route("mirror", "/mirror", backends=(_to(v1),), mirrors=(model.Mirror(v2),)),
        _route("broken", "/broken", backends=(model.WeightedBackend(None),)),
        _route("half", "/half", backends=(_to(v1), model.WeightedBackend(None))),
        _route("nobackend", "/nobackend"),
        _route("direct", "/direct", direct_status=503),
        _route("catchall", "/", backends=(_to(v1),)),
    )


def _web_routes() -> tuple[model.Route, ...]:
    redirect = model.Redirect
    new_prefix = model.PathModifier(model.PathModifierType.PREFIX, "/new")
    return (
        _route("https", "/https", redirect=redirect(scheme="https", status_code=301)),
        _route("host", "/host", redirect=redirect(hostname="other.example")),
        _route("path", "/old", redirect=redirect(path=new_prefix, status_code=308)),
        _route("port", "/port", redirect=redirect(scheme="https", port=8443, status_code=307)),
    )


def _dest(
    name: str,
    port: int,
    vip: str,
    protocol: model.Protocol = model.Protocol.HTTP,
    routes: tuple[model.Route, ...] = (),
) -> model.Destination:
    kind = model.DestinationKind.SERVICE
    cluster = _svc_cluster(name, port)
    return model.Destination(kind, "ns1", name, port, (vip,), protocol, cluster, routes)


def _cluster(
    name: str, port: int, endpoint: model.Endpoint, protocol: model.Protocol = model.Protocol.HTTP
) -> model.Cluster:
    return model.Cluster(_svc_cluster(name, port), protocol, (endpoint,), "ns1", name, port)


def _waypoint(ports: dict[str, int]) -> model.Waypoint:
    """The waypoint under test; ``ports`` are the real ports of the backends by name."""
    ep = model.Endpoint
    http2, tcp = model.Protocol.HTTP2, model.Protocol.TCP
    destinations = (
        _dest("echo", 80, ECHO_VIP, routes=_echo_routes()),
        _dest("web", 8080, WEB_VIP, routes=_web_routes()),
        _dest("db", 5432, DB_VIP, tcp),
        _dest("grpc", 9000, GRPC_VIP, http2),
        _dest("mesh", 80, MESH_VIP),
        _dest("rogue", 80, ROGUE_VIP),
        _dest("impostor", 80, IMPOSTOR_VIP),
    )
    clusters = (
        _cluster("v1", 80, ep("127.0.0.1", ports["v1"])),
        _cluster("v2", 80, ep("127.0.0.1", ports["v2"])),
        _cluster("web", 8080, ep("127.0.0.1", ports["v1"])),
        _cluster("db", 5432, ep("127.0.0.1", ports["db"]), tcp),
        _cluster("grpc", 9000, ep("127.0.0.1", ports["grpc"]), http2),
        # Mesh endpoints: tunnels to <ip>:<upstream hbone port>, where terminators listen.
        _cluster("mesh", 80, ep("127.0.0.1", ports["mesh"], hbone=True, service_account="mesh")),
        _cluster("rogue", 80, ep("127.0.0.2", ports["mesh"], hbone=True)),
        _cluster(
            "impostor", 80, ep("127.0.0.3", ports["mesh"], hbone=True, service_account="mesh")
        ),
    )
    return model.Waypoint(
        "ns1",
        "waypoint",
        model.TrafficType.SERVICE,
        model.WaypointIdentity(TD, "ns1", "waypoint"),
        None,
        tuple(sorted(destinations, key=lambda d: d.name)),
        tuple(sorted(clusters, key=lambda c: c.name)),
    )


def _echoes() -> dict[str, echo.EchoServer]:
    return {
        "v1": echo.EchoServer("v1", "ns1", http_ports=(0,), version="v1"),
        "v2": echo.EchoServer("v2", "ns1", http_ports=(0,), version="v2"),
        "db": echo.EchoServer("db", "ns1", http_ports=(), tcp_ports=(0,)),
        "grpc": echo.EchoServer("grpc", "ns1", http_ports=(), grpc_ports=(0,)),
        "mesh": echo.EchoServer("mesh", "ns1", http_ports=(0,)),
    }


def _terminators(
    ca: dev_ca.CertificateAuthority, port: int
) -> dict[str, hbone_terminator.HboneTerminator]:
    """The real destination, one outside the trust domain, one with the wrong account."""
    identities = {
        "mesh": ("127.0.0.1", ca.issue_workload("ns1", "mesh")),
        "rogue": ("127.0.0.2", ca.issue("spiffe://evil.local/ns/ns1/sa/mesh")),
        "impostor": ("127.0.0.3", ca.issue_workload("ns1", "other")),
    }
    return {
        name: hbone_terminator.HboneTerminator(ident.ssl_context(server=True), (ip, port))
        for name, (ip, ident) in identities.items()
    }


def _ports(echoes: dict[str, echo.EchoServer]) -> dict[str, int]:
    return {
        name: (server.http_ports or server.tcp_ports or server.grpc_ports)[0]
        for name, server in echoes.items()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("envoy-integration")
    ca = dev_ca.CertificateAuthority.create(TD)
    cert_dir = tmp / "certs"
    ca.issue_workload("ns1", "waypoint").write(cert_dir)
    opts = conftest.loopback_options(
        trust_domain=TD,
        cert_dir=str(cert_dir),
        sds_dir=str(tmp / "sds"),
        hbone_port=conftest.free_port(),
        upstream_hbone_port=conftest.free_port(),
    )
    echoes = _echoes()
    terminators = _terminators(ca, opts.upstream_hbone_port)
    servers: list[echo.EchoServer | hbone_terminator.HboneTerminator] = [
        *echoes.values(),
        *terminators.values(),
    ]
    started: list[echo.EchoServer | hbone_terminator.HboneTerminator] = []
    try:
        for server in servers:
            server.start_background()
            started.append(server)
        sds.write_files(opts)
        config = tmp / "envoy.yaml"
        config.write_text(bootstrap.to_yaml(bootstrap.build(_waypoint(_ports(echoes)), opts)))
        with envoy_process.running(config, opts.admin_port, tmp / "envoy.log") as proxy:
            yield World(opts, proxy, ca, cert_dir, echoes, terminators)
    finally:
        for server in reversed(started):
            server.stop_background()


def _report(resp: hbone_client.Response) -> echo.EchoReport:
    assert resp.status == 200, resp.text
    return echo.parse_echo(resp.body)


def test_routes_to_the_matching_backend(world: World) -> None:
    report = _report(world.get(ECHO, "/anything"))
    assert (report.hostname, report.url) == ("v1", "/anything")


def test_unknown_authority_gets_404(world: World) -> None:
    with pytest.raises(errors.TunnelRejected) as caught:
        world.get("10.96.9.9:80", "/")
    assert caught.value.status == 404


def test_consumer_route_applies_only_to_its_namespace(world: World) -> None:
    assert _report(world.get(ECHO, "/who", namespace="client")).hostname == "v2"
    assert _report(world.get(ECHO, "/who", namespace="other")).hostname == "v1"
    # For its namespace a consumer route replaces the producer's routes: no fallback.
    assert world.get(ECHO, "/anything", namespace="client").status == 404
    assert _report(world.get(ECHO, "/anything", namespace="other")).hostname == "v1"


def test_weighted_split_reaches_both_backends(world: World) -> None:
    with world.client() as hbone:
        seen = collections.Counter(
            _report(hbone.request(ECHO, path="/split")).hostname for _ in range(40)
        )
    assert set(seen) == {"v1", "v2"}


def test_request_and_response_header_modifiers(world: World) -> None:
    resp = world.get(
        ECHO, "/headers", headers=[("x-set", "old"), ("x-add", "first"), ("x-remove", "gone")]
    )
    report = _report(resp)
    assert report.headers["x-set"] == ["new"]
    assert sorted(report.headers["x-add"]) == ["first", "more"]
    assert "x-remove" not in report.headers
    assert report.header("x-backend") == "v1"
    assert resp.header("x-resp-set") == "yes"
    assert resp.header("x-resp-add") == "also"


def test_url_rewrite_of_prefix_and_host(world: World) -> None:
    report = _report(world.get(ECHO, "/rewrite/a/b?x=1"))
    assert (report.url, report.host) == ("/a/b?x=1", "rewritten.example")
    assert _report(world.get(ECHO, "/rewrite")).url == "/"
    assert _report(world.get(ECHO, "/prefix/one/two")).url == "/one/two"
    assert _report(world.get(ECHO, "/prefix/one")).url == "/one"
    assert _report(world.get(ECHO, "/full/x?q=1")).url == "/whole?q=1"


def test_path_prefix_respects_segment_boundaries(world: World) -> None:
    # /rewritex is not under /rewrite: it falls to the catch-all, unrewritten.
    assert _report(world.get(ECHO, "/rewritex")).url == "/rewritex"


def test_unresolved_backends_and_direct_responses(world: World) -> None:
    assert world.get(ECHO, "/broken").status == 500
    assert world.get(ECHO, "/nobackend").status == 500
    assert world.get(ECHO, "/direct").status == 503
    with world.client() as hbone:
        statuses = {hbone.request(ECHO, path="/half").status for _ in range(40)}
    assert statuses == {200, 500}


@pytest.mark.parametrize(
    ("path", "status", "location"),
    [
        ("/https/x", 301, "https://web.example/https/x"),
        ("/host", 302, "http://other.example:8080/host"),
        ("/old/page", 308, "http://web.example:8080/new/page"),
        ("/port", 307, "https://web.example:8443/port"),
    ],
)
def test_redirects(world: World, path: str, status: int, location: str) -> None:
    resp = world.get(WEB, path, host="web.example:8080")
    assert (resp.status, resp.header("location")) == (status, location)


def test_tcp_destination_through_tcp_proxy(world: World) -> None:
    with world.client() as hbone, hbone.open_tunnel(DB) as tunnel:
        tunnel.send(b"hello through the waypoint")
        tunnel.shutdown_write()
        assert tunnel.recv_all() == b"Hostname=db\nhello through the waypoint"


def test_hbone_upstream_presents_waypoint_identity(world: World) -> None:
    mesh = world.terminators["mesh"]
    before = len(mesh.records)
    report = _report(world.get(MESH, "/via-hbone"))
    assert report.hostname == "mesh"
    record = mesh.records[before]
    assert record.peer_id == names.spiffe_id(TD, "ns1", "waypoint")
    assert record.authority == f"127.0.0.1:{world.echoes['mesh'].http_ports[0]}"
    assert record.status == 200


def test_hbone_upstream_outside_trust_domain_is_refused(world: World) -> None:
    stat = "cluster.connect_originate.ssl.fail_verify_san"
    before = world.stat(stat)
    assert world.get(ROGUE, "/").status == 503
    assert world.terminators["rogue"].records == []
    assert world.stat(stat) > before


def test_hbone_upstream_with_the_wrong_service_account_is_refused(world: World) -> None:
    stat = "cluster.connect_originate|ns1|mesh.ssl.fail_verify_san"
    before = world.stat(stat)
    assert world.get(IMPOSTOR, "/").status == 503
    assert world.terminators["impostor"].records == []
    assert world.stat(stat) > before


def test_grpc_over_http2_destination(world: World) -> None:
    with world.client() as hbone:
        result = hbone.grpc_unary(
            GRPC,
            "/proto.EchoTestService/Echo",
            echo_pb2.EchoRequest(message="hi").SerializeToString(),
        )
    assert result.status == grpcwire.OK, result.details
    report = echo.parse_echo(echo_pb2.EchoResponse.FromString(result.message).message)
    assert (report.hostname, report.message) == ("grpc", "hi")


def test_method_header_query_and_regex_matches(world: World) -> None:
    hit = world.get(ECHO, "/match/abc?q=42", method="POST", headers=[("x-v", "2")])
    assert _report(hit).hostname == "v2"
    misses = [
        world.get(ECHO, "/match/abc?q=42", headers=[("x-v", "2")]),  # GET
        world.get(ECHO, "/match/abc?q=x", method="POST", headers=[("x-v", "2")]),
        world.get(ECHO, "/match/abc?q=42", method="POST", headers=[("x-v", "3")]),
        world.get(ECHO, "/match/ABC?q=42", method="POST", headers=[("x-v", "2")]),
    ]
    assert [_report(miss).hostname for miss in misses] == ["v1"] * 4


def test_request_mirror_copies_to_second_backend(world: World) -> None:
    mirror = world.echoes["v2"]
    before = mirror.requests_served
    assert _report(world.get(ECHO, "/mirror")).hostname == "v1"
    deadline = time.monotonic() + 10
    while mirror.requests_served == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mirror.requests_served == before + 1


def _rejected(world: World, context: ssl.SSLContext) -> None:
    hbone = hbone_client.SyncHboneClient(
        ("127.0.0.1", world.opts.hbone_port), context, timeout=10.0
    )
    with hbone, pytest.raises((errors.HboneError, ssl.SSLError, ConnectionError)):
        hbone.request(ECHO, path="/")


def _listener_stat(world: World, name: str) -> int:
    return world.stat(f"listener.127.0.0.1_{world.opts.hbone_port}.ssl.{name}")


def test_client_without_certificate_is_rejected(world: World) -> None:
    before = _listener_stat(world, "fail_verify_no_cert")
    _rejected(world, pki.trusting_context(world.ca.root_pem))
    assert _listener_stat(world, "fail_verify_no_cert") == before + 1


def test_client_from_another_trust_domain_is_rejected(world: World) -> None:
    before = _listener_stat(world, "fail_verify_san")
    foreign = world.ca.issue("spiffe://evil.local/ns/client/sa/sleep")
    _rejected(world, foreign.ssl_context(server=False))
    assert _listener_stat(world, "fail_verify_san") == before + 1


def test_expired_client_certificate_is_rejected(world: World) -> None:
    before = _listener_stat(world, "fail_verify_error")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    expired = world.ca.issue_workload("client", "sleep", not_after=past)
    _rejected(world, expired.ssl_context(server=False))
    assert _listener_stat(world, "fail_verify_error") == before + 1


def test_tls12_client_is_rejected(world: World) -> None:
    context = world.ca.issue_workload("client", "sleep").ssl_context(server=False)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    address = ("127.0.0.1", world.opts.hbone_port)
    with socket.create_connection(address, timeout=5) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw).close()


def test_readiness_and_prometheus_listeners(world: World) -> None:
    base = "http://127.0.0.1:"
    with urllib.request.urlopen(
        f"{base}{world.opts.readiness_port}/healthz/ready", timeout=5
    ) as resp:
        assert (resp.status, resp.read().strip()) == (200, b"LIVE")
    with urllib.request.urlopen(
        f"{base}{world.opts.stats_port}/stats/prometheus", timeout=5
    ) as resp:
        assert b"envoy_cluster_upstream_cx_total" in resp.read()


def _served_serial(world: World) -> int:
    ident = world.ca.issue_workload("client", "probe")
    context = ident.ssl_context(server=False)
    address = ("127.0.0.1", world.opts.hbone_port)
    with socket.create_connection(address, timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_rotated_certificate_is_served_without_restart(world: World) -> None:
    old = _served_serial(world)
    rotated = world.ca.issue_workload("ns1", "waypoint")
    rotated.write(world.cert_dir)
    deadline = time.monotonic() + 20
    while _served_serial(world) == old and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _served_serial(world) == rotated.certificate.serial_number
    assert world.proxy.process.poll() is None  # same process: no restart

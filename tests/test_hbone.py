"""HBONE end to end over real sockets, TLS 1.3 and HTTP/2: client ↔ terminator ↔ echo,
and the client against a real Envoy that terminates HBONE."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import pathlib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator

import pytest

from tests import conftest
from waypoint import names, pki
from waypoint.local import ca as dev_ca
from waypoint.local import echo
from waypoint.local.hbone import client, echo_pb2, errors, grpcwire, h2io, loop, terminator

MiB = 1 << 20
ECHO_METHOD = "/proto.EchoTestService/Echo"


@pytest.fixture(scope="module")
def ca() -> dev_ca.CertificateAuthority:
    return dev_ca.CertificateAuthority.create(
        "cluster.local", not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    )


@dataclasses.dataclass
class Stack:
    ca: dev_ca.CertificateAuthority
    backend: echo.EchoServer
    term: terminator.HboneTerminator
    client_id: pki.Identity

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.backend.http_ports[0]}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.backend.grpc_ports[0]}"

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.backend.tcp_ports[0]}"

    def client(
        self, identity: pki.Identity | None = None, window: int | None = None
    ) -> client.HboneClient:
        ctx = (identity or self.client_id).ssl_context(server=False)
        if window is None:
            return client.HboneClient(self.term.address, ctx, connect_timeout=5.0)
        return client.HboneClient(
            self.term.address,
            ctx,
            connect_timeout=5.0,
            stream_window=window,
            connection_window=window,
        )


@contextlib.asynccontextmanager
async def stack(ca: dev_ca.CertificateAuthority, **term_kwargs: object) -> AsyncIterator[Stack]:
    backend = echo.EchoServer(
        "echo-v1-abc", "apps", http_ports=(0,), grpc_ports=(0,), tcp_ports=(0,)
    )
    server_id = ca.issue_workload("istio-system", "ztunnel")
    term = terminator.HboneTerminator(
        server_id.ssl_context(server=True),
        allowed_trust_domain="cluster.local",
        **term_kwargs,  # type: ignore[arg-type]
    )
    async with backend, term:
        yield Stack(ca, backend, term, ca.issue_workload("apps", "waypoint"))


@pytest.mark.asyncio
async def test_http1_inside_connect_reaches_echo(ca: dev_ca.CertificateAuthority) -> None:
    async with stack(ca) as s, s.client() as c:
        resp = await c.request(
            s.http, "POST", "/hello?x=1", [("X-Test", "a"), ("X-Test", "b")], b"body"
        )
        assert resp.status == 200
        report = echo.parse_echo(resp.body)
        assert (report.hostname, report.namespace) == ("echo-v1-abc", "apps")
        assert (report.method, report.url, report.host, report.proto) == (
            "POST",
            "/hello?x=1",
            s.http,
            "HTTP/1.1",
        )
        assert report.headers["x-test"] == ["a", "b"]
        assert report.headers["content-length"] == ["4"]
        assert s.term.peers == ["spiffe://cluster.local/ns/apps/sa/waypoint"]
        assert s.term.records[0].authority == s.http
        assert c.peer_id == "spiffe://cluster.local/ns/istio-system/sa/ztunnel"


@pytest.mark.asyncio
async def test_host_override_json_format_and_connect_headers(
    ca: dev_ca.CertificateAuthority,
) -> None:
    async with stack(ca) as s, s.client() as c:
        resp = await c.request(
            s.http,
            path="/j",
            headers=[("Accept", "application/json")],
            host="reviews.apps:9080",
            connect_headers=[("baggage", "k8s.namespace.name=apps")],
        )
        assert resp.header("content-type") == "application/json"
        report = echo.parse_echo(resp.text)
        assert report.host == "reviews.apps:9080"
        assert ("baggage", "k8s.namespace.name=apps") in s.term.records[0].headers


@pytest.mark.asyncio
async def test_grpc_inside_connect(ca: dev_ca.CertificateAuthority) -> None:
    async with stack(ca) as s, s.client() as c:
        status, message, trailers = await c.grpc_unary(
            s.grpc,
            ECHO_METHOD,
            echo_pb2.EchoRequest(message="ping").SerializeToString(),
            [("x-md", "v1")],
        )
        assert status == grpcwire.OK
        assert ("grpc-status", "0") in trailers
        report = echo.parse_echo(echo_pb2.EchoResponse.FromString(message).message)
        assert (report.hostname, report.message, report.proto) == ("echo-v1-abc", "ping", "GRPC")
        assert report.url == ECHO_METHOD
        assert report.headers["x-md"] == ["v1"]
        # Any method echoes.
        other = await c.grpc_unary(s.grpc, "/pkg.Other/Call", b"")
        assert other.status == grpcwire.OK
        assert (
            echo.parse_echo(echo_pb2.EchoResponse.FromString(other.message).message).url
            == "/pkg.Other/Call"
        )


@pytest.mark.asyncio
@pytest.mark.parametrize("window", [None, 65535, 16384])
async def test_one_mib_both_ways_respects_flow_control(
    ca: dev_ca.CertificateAuthority, window: int | None
) -> None:
    payload = bytes(range(251)) * (MiB // 251 + 1)
    payload = payload[:MiB]
    windows = {} if window is None else {"stream_window": window, "connection_window": window}
    async with stack(ca, **windows) as s, s.client(window=window) as c:
        tunnel = await c.open_tunnel(s.tcp)

        async def send() -> None:
            tunnel.write(payload)
            tunnel.write_eof()
            await tunnel.drain()

        sender = asyncio.create_task(send())
        echoed = await tunnel.read_all()
        await sender
        assert echoed == b"Hostname=echo-v1-abc\n" + payload
        # A 1 MiB HTTP request body also arrives whole.
        resp = await c.request(s.http, "PUT", "/big", body=payload)
        assert echo.parse_echo(resp.body).headers["content-length"] == [str(MiB)]


@pytest.mark.asyncio
async def test_many_concurrent_streams_share_one_connection(
    ca: dev_ca.CertificateAuthority,
) -> None:
    async with stack(ca) as s, s.client() as c:
        responses = await asyncio.gather(*(c.request(s.http, path=f"/r/{i}") for i in range(100)))
        assert [echo.parse_echo(r.body).url for r in responses] == [f"/r/{i}" for i in range(100)]
        tunnels = [await c.open_tunnel(s.tcp) for _ in range(20)]
        assert c.connections_made == 1
        for i, tunnel in enumerate(tunnels):
            tunnel.write(f"msg-{i}".encode())
            tunnel.write_eof()
        outputs = await asyncio.gather(*(t.read_all() for t in tunnels))
        assert outputs == [f"Hostname=echo-v1-abc\nmsg-{i}".encode() for i in range(20)]
        assert len(s.term.peers) == 120


@pytest.mark.asyncio
async def test_client_waits_for_the_servers_stream_limit(ca: dev_ca.CertificateAuthority) -> None:
    async with stack(ca, max_concurrent_streams=3) as s, s.client() as c:
        conn = await c.connect()
        # Hold three tunnels open: the limit is reached.
        held = [await c.open_tunnel(s.tcp) for _ in range(3)]
        waiting = asyncio.create_task(c.open_tunnel(s.tcp))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert conn.open_streams == 3
        held[0].write_eof()
        assert await held[0].read_all() == b"Hostname=echo-v1-abc\n"
        fourth = await asyncio.wait_for(waiting, 10)
        fourth.write(b"ok")
        fourth.write_eof()
        assert await fourth.read_all() == b"Hostname=echo-v1-abc\nok"
        responses = await asyncio.gather(*(c.request(s.http, path=f"/q{i}") for i in range(30)))
        assert {r.status for r in responses} == {200}
        for tunnel in held[1:]:
            await tunnel.aclose()
        assert c.connections_made == 1


@pytest.mark.asyncio
async def test_tunnel_reset_and_half_close_reach_the_backend(
    ca: dev_ca.CertificateAuthority,
) -> None:
    closed: asyncio.Queue[bytes] = asyncio.Queue()

    async def recorder(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until EOF or reset
        writer.write(b"got:" + data)
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()
        await closed.put(data)

    server = await asyncio.start_server(recorder, "127.0.0.1", 0)
    target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with stack(ca) as s, s.client() as c:
            half = await c.open_tunnel(target)
            half.write(b"abc")
            half.write_eof()  # our FIN reaches the backend, which can still answer
            assert await half.read_all() == b"got:abc"
            assert await asyncio.wait_for(closed.get(), 10) == b"abc"

            aborted = await c.open_tunnel(target)
            aborted.write(b"xyz")
            await aborted.drain()
            aborted.reset()
            assert await asyncio.wait_for(closed.get(), 10) == b"xyz"
            assert (await c.request(s.http)).status == 200
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_request_timeout_resets_only_that_tunnel(ca: dev_ca.CertificateAuthority) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with stack(ca) as s, s.client() as c:
            with pytest.raises(TimeoutError):
                await c.request(target, timeout=0.3)
            conn = await c.connect()
            assert conn.open_streams == 0
            assert (await c.request(s.http)).status == 200
            assert c.connections_made == 1
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_client_requires_alpn_h2(ca: dev_ca.CertificateAuthority) -> None:
    async with stack(ca) as s:
        no_alpn = s.client_id.ssl_context(server=False, alpn=())
        async with client.HboneClient(s.term.address, no_alpn) as c:
            with pytest.raises(errors.HboneConnectionError, match="ALPN h2"):
                await c.connect()


@pytest.mark.asyncio
async def test_unreachable_target_gets_503(ca: dev_ca.CertificateAuthority) -> None:
    dead = f"127.0.0.1:{conftest.free_port()}"
    async with stack(ca) as s, s.client() as c:
        with pytest.raises(errors.TunnelRejected) as info:
            await c.open_tunnel(dead)
        assert info.value.status == 503
        assert s.term.records[-1].status == 503
        assert s.term.peers == []
        # The connection survives a rejected tunnel.
        assert (await c.request(s.http)).status == 200
        assert c.connections_made == 1


@pytest.mark.asyncio
async def test_bad_authority_and_non_connect_are_refused(ca: dev_ca.CertificateAuthority) -> None:
    async with stack(ca) as s, s.client() as c:
        with pytest.raises(errors.TunnelRejected) as info:
            await c.open_tunnel("no-port-here")
        assert info.value.status == 400
        conn = await c.connect()
        stream = await conn.open_stream(
            [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", s.http)],
            end_stream=True,
        )
        assert h2io.header(await stream.response_headers(), ":status") == "405"


@pytest.mark.asyncio
async def test_target_override_redirects_an_authority(ca: dev_ca.CertificateAuthority) -> None:
    backend = echo.EchoServer("redirected", "apps", bind="127.0.0.2", http_ports=(0,))
    async with backend:
        override = {"10.96.0.10:80": ("127.0.0.2", backend.http_ports[0])}
        async with stack(ca, target_override=override) as s, s.client() as c:
            resp = await c.request("10.96.0.10:80", path="/vip")
            report = echo.parse_echo(resp.body)
            assert (report.hostname, report.host) == ("redirected", "10.96.0.10:80")
            assert s.term.records[0].target == ("127.0.0.2", backend.http_ports[0])


@pytest.mark.asyncio
async def test_client_without_certificate_is_rejected(ca: dev_ca.CertificateAuthority) -> None:
    async with stack(ca) as s:
        anonymous = client.HboneClient(
            s.term.address, pki.trusting_context(ca.root_pem), connect_timeout=5.0
        )
        with pytest.raises(errors.HboneConnectionError, match=r"(?i)certificate"):
            await anonymous.connect()
        assert s.term.records == []


@pytest.mark.asyncio
async def test_client_from_another_ca_is_rejected(ca: dev_ca.CertificateAuthority) -> None:
    stranger = dev_ca.CertificateAuthority.create("cluster.local").issue_workload(
        "apps", "waypoint"
    )
    async with stack(ca) as s, s.client(stranger.with_root(ca.certificate)) as c:
        with pytest.raises(errors.HboneConnectionError, match=r"(?i)unknown ca|certificate"):
            await c.request(s.http)
        assert s.term.records == []


@pytest.mark.asyncio
async def test_expired_client_certificate_is_rejected(ca: dev_ca.CertificateAuthority) -> None:
    old = ca.issue(
        names.spiffe_id("cluster.local", "apps", "waypoint"),
        not_after=datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1),
    )
    async with stack(ca) as s, s.client(old) as c:
        with pytest.raises(errors.HboneConnectionError, match=r"(?i)expired|certificate"):
            await c.request(s.http)


@pytest.mark.asyncio
async def test_wrong_trust_domain_is_rejected(ca: dev_ca.CertificateAuthority) -> None:
    foreign = ca.issue(names.spiffe_id("evil.example", "apps", "waypoint"))
    async with stack(ca) as s, s.client(foreign) as c:
        with pytest.raises(
            errors.HboneConnectionError, match=r"outside trust domain cluster.local"
        ):
            await c.request(s.http)
        assert s.term.rejected_peers == ["spiffe://evil.example/ns/apps/sa/waypoint"]
        assert s.term.records == []


@pytest.mark.asyncio
async def test_client_checks_the_server_identity(ca: dev_ca.CertificateAuthority) -> None:
    async with stack(ca) as s:
        ctx = s.client_id.ssl_context(server=False)
        wrong = client.HboneClient(
            s.term.address, ctx, expected_server_id="spiffe://cluster.local/ns/x/sa/y"
        )
        with pytest.raises(errors.HboneConnectionError, match="not the expected"):
            await wrong.connect()
        right = client.HboneClient(s.term.address, ctx, expected_trust_domain="cluster.local")
        async with right:
            assert (await right.request(s.http)).status == 200


@pytest.mark.asyncio
async def test_client_redials_after_the_server_goes_away(ca: dev_ca.CertificateAuthority) -> None:
    async with stack(ca) as s, s.client() as c:
        assert (await c.request(s.http)).status == 200
        host, port = s.term.address
        await s.term.stop()
        replacement = terminator.HboneTerminator(
            ca.issue_workload("istio-system", "ztunnel").ssl_context(server=True), (host, port)
        )
        async with replacement:
            assert (await c.request(s.http)).status == 200
        assert c.connections_made == 2


def test_sync_client_from_plain_threads(ca: dev_ca.CertificateAuthority) -> None:
    runner = loop.LoopThread("test-hbone")
    backend = echo.EchoServer(
        "sync-echo", "apps", http_ports=(0,), grpc_ports=(0,)
    ).start_background(runner)
    term = terminator.HboneTerminator(
        ca.issue_workload("istio-system", "ztunnel").ssl_context(server=True)
    )
    term.start_background(runner)
    sync = client.SyncHboneClient(
        term.address, ca.issue_workload("apps", "load").ssl_context(server=False)
    )
    results: list[str] = []
    failures: list[BaseException] = []

    def user(i: int) -> None:
        try:
            for j in range(5):
                resp = sync.request(f"127.0.0.1:{backend.http_ports[0]}", path=f"/u{i}/{j}")
                results.append(echo.parse_echo(resp.body).url)
        except BaseException as exc:
            failures.append(exc)

    try:
        threads = [threading.Thread(target=user, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert sorted(results) == sorted(f"/u{i}/{j}" for i in range(4) for j in range(5))
        grpc_result = sync.grpc_unary(
            f"127.0.0.1:{backend.grpc_ports[0]}",
            ECHO_METHOD,
            echo_pb2.EchoRequest(message="x").SerializeToString(),
        )
        assert grpc_result.status == grpcwire.OK
        with sync.open_tunnel(f"127.0.0.1:{backend.http_ports[0]}") as tunnel:
            tunnel.send(b"GET /raw HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            raw = tunnel.recv_all()
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"URL=/raw\n" in raw
        assert sync.client.connections_made == 1
    finally:
        sync.close()
        term.stop_background()
        backend.stop_background()
        runner.stop()


GEVENT_SCRIPT = """
from gevent import monkey
monkey.patch_all()
import sys, gevent
from waypoint.local.hbone import client, terminator
from waypoint.local import ca as dev_ca
from waypoint.local import echo
ca = dev_ca.CertificateAuthority.create()
backend = echo.EchoServer("gevent-echo", "apps", http_ports=(0,)).start_background()
term = terminator.HboneTerminator(ca.issue_workload("istio-system", "ztunnel").ssl_context(server=True))
term.start_background()
sync = client.SyncHboneClient(term.address, ca.issue_workload("apps", "locust").ssl_context(server=False))
seen = []
def user(i):
    for j in range(5):
        seen.append(echo.parse_echo(sync.request(f"127.0.0.1:{backend.http_ports[0]}", path=f"/{i}/{j}").body).url)
gevent.joinall([gevent.spawn(user, i) for i in range(8)], raise_error=True)
sync.close(); term.stop_background(); backend.stop_background()
assert sorted(seen) == sorted(f"/{i}/{j}" for i in range(8) for j in range(5)), seen
print("gevent-ok", len(seen))
"""


def test_sync_client_under_gevent_monkey_patching() -> None:
    """Locust users are greenlets in a monkey-patched process; the sync client must work there."""
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=conftest.REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "gevent-ok 40"


# -- through a real Envoy ---------------------------------------------------------------------

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def _hcm(stat_prefix: str, routes: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "route_config": {
                "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}]
            },
            "http_filters": [ROUTER],
            **extra,
        },
    }


def _connect_route(authority: str, cluster: str) -> dict[str, object]:
    return {
        "match": {
            "connect_matcher": {},
            "headers": [{"name": ":authority", "string_match": {"exact": authority}}],
        },
        "route": {
            "cluster": cluster,
            "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
        },
    }


def _internal_cluster(name: str, listener: str) -> dict[str, object]:
    return {
        "name": name,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "envoy_internal_address": {"server_listener_name": listener}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.internal_upstream",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                    },
                },
            },
        },
    }


def _static_cluster(name: str, port: int, *, http2: bool = False) -> dict[str, object]:
    cluster: dict[str, object] = {
        "name": name,
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _hbone_envoy_config(
    admin: int, hbone_port: int, cert_dir: pathlib.Path, http_port: int, grpc_port: int
) -> dict[str, object]:
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_3",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(cert_dir / pki.CERT_CHAIN_FILE)},
                        "private_key": {"filename": str(cert_dir / pki.KEY_FILE)},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(cert_dir / pki.ROOT_CERT_FILE)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}
                    ],
                },
            },
        },
    }
    hbone = _hcm(
        "hbone",
        [
            _connect_route("10.96.0.10:80", "svc-http"),
            _connect_route("10.96.0.11:7070", "svc-grpc"),
        ],
        http2_protocol_options={"allow_connect": True},
        upgrade_configs=[{"upgrade_type": "CONNECT"}],
    )
    to_echo: list[dict[str, object]] = [
        {"match": {"prefix": "/"}, "route": {"cluster": "echo-http"}}
    ]
    to_grpc: list[dict[str, object]] = [
        {"match": {"prefix": "/"}, "route": {"cluster": "echo-grpc"}}
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
                },
            }
        ],
        "static_resources": {
            "listeners": [
                {
                    "name": "hbone",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": hbone_port}
                    },
                    "filter_chains": [{"transport_socket": tls, "filters": [hbone]}],
                },
                {
                    "name": "svc-http",
                    "internal_listener": {},
                    "filter_chains": [{"filters": [_hcm("svc_http", to_echo)]}],
                },
                {
                    "name": "svc-grpc",
                    "internal_listener": {},
                    "filter_chains": [{"filters": [_hcm("svc_grpc", to_grpc)]}],
                },
            ],
            "clusters": [
                _internal_cluster("svc-http", "svc-http"),
                _internal_cluster("svc-grpc", "svc-grpc"),
                _static_cluster("echo-http", http_port),
                _static_cluster("echo-grpc", grpc_port, http2=True),
            ],
        },
    }


def test_client_through_real_envoy_hbone(
    ca: dev_ca.CertificateAuthority, envoy: conftest.EnvoyStarter, tmp_path: pathlib.Path
) -> None:
    cert_dir = ca.issue_workload("apps", "waypoint").write(tmp_path / "certs")
    backend = echo.EchoServer(
        "behind-envoy", "apps", http_ports=(0,), grpc_ports=(0,)
    ).start_background()
    try:
        admin, hbone_port = conftest.free_port(), conftest.free_port()
        envoy(
            _hbone_envoy_config(
                admin, hbone_port, cert_dir, backend.http_ports[0], backend.grpc_ports[0]
            ),
            admin,
        )
        caller = ca.issue_workload("apps", "sleep")
        with client.SyncHboneClient(
            ("127.0.0.1", hbone_port), caller.ssl_context(server=False)
        ) as sync:
            resp = sync.request("10.96.0.10:80", "GET", "/via-envoy?q=1", [("X-Caller", "test")])
            assert resp.status == 200
            report = echo.parse_echo(resp.body)
            assert (report.hostname, report.url, report.host) == (
                "behind-envoy",
                "/via-envoy?q=1",
                "10.96.0.10:80",
            )
            assert report.header("x-caller") == "test"
            assert report.header(
                "x-request-id"
            )  # added by Envoy's HCM: it really went through Envoy
            assert sync.peer_id == "spiffe://cluster.local/ns/apps/sa/waypoint"

            result = sync.grpc_unary(
                "10.96.0.11:7070",
                ECHO_METHOD,
                echo_pb2.EchoRequest(message="via envoy").SerializeToString(),
            )
            assert result.status == grpcwire.OK
            assert (
                echo.parse_echo(echo_pb2.EchoResponse.FromString(result.message).message).message
                == "via envoy"
            )

            with pytest.raises(errors.TunnelRejected) as info:
                sync.request("10.96.0.99:80")
            assert info.value.status == 404
            assert sync.client.connections_made == 1

        foreign = ca.issue(names.spiffe_id("evil.example", "apps", "sleep"))
        with (
            client.SyncHboneClient(
                ("127.0.0.1", hbone_port), foreign.ssl_context(server=False)
            ) as bad,
            pytest.raises(errors.HboneConnectionError),
        ):
            bad.request("10.96.0.10:80")
    finally:
        backend.stop_background()

"""``waypoint serve`` end to end: YAML in a watched directory → translation → ADS → real Envoy.

Traffic is HBONE (mTLS HTTP/2 CONNECT) through the waypoint to echo backends, as ztunnel
would send it. Editing the HTTPRoute file moves traffic without restarting Envoy and without
a failed request; a file that stops parsing changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from tests import conftest
from tests import test_xds_support as support
from waypoint.envoy import options as envoy_options
from waypoint.local import ca as dev_ca
from waypoint.local import echo
from waypoint.local.hbone import client as hbone_client
from waypoint.xds import bootstrap, cache, filesource, naming, publish, runner

TD = "cluster.local"
VIP = "10.96.0.10"
AUTHORITY = f"{VIP}:80"
KEY = naming.WaypointKey("demo", "waypoint")
VARIANTS = [pytest.param(False, id="sotw"), pytest.param(True, id="delta")]

WORLD = """\
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {istio.io/use-waypoint: waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""

SERVICE = """\
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  clusterIP: {vip}
  ports: [{{name: http, port: 80, targetPort: {port}, appProtocol: http}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: demo
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: demo}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules: [{{backendRefs: [{{name: {backend}, port: 80}}]}}]
"""


@dataclasses.dataclass
class Setup:
    directory: pathlib.Path
    opts: envoy_options.BootstrapOptions
    ca: dev_ca.CertificateAuthority

    def write_route(self, backend: str) -> None:
        # Write then rename, as editors and kubectl-style tools do, so a reader never sees half.
        target = self.directory / "route.yaml"
        scratch = self.directory / ".route.yaml.tmp"
        scratch.write_text(ROUTE.format(backend=backend))
        os.replace(scratch, target)

    def client(self) -> hbone_client.SyncHboneClient:
        return hbone_client.SyncHboneClient(
            ("127.0.0.1", self.opts.hbone_port),
            self.ca.issue_workload("demo", "sleep").ssl_context(server=False),
            expected_trust_domain=TD,
            timeout=10.0,
        )

    def bootstrap(self, xds: str, delta: bool) -> dict[str, object]:
        return bootstrap.build(xds, KEY.namespace, KEY.name, self.opts, delta=delta)


@pytest.fixture
def setup(tmp_path: pathlib.Path) -> Iterator[Setup]:
    ca = dev_ca.CertificateAuthority.create(TD)
    cert_dir = tmp_path / "certs"
    ca.issue_workload("demo", "waypoint").write(cert_dir)
    opts = conftest.loopback_options(
        trust_domain=TD,
        cert_dir=str(cert_dir),
        hbone_port=conftest.free_port(),
    )
    backends = [
        echo.EchoServer(name, "demo", http_ports=(0,)).start_background() for name in ("v1", "v2")
    ]
    directory = tmp_path / "watched"
    directory.mkdir()
    services = [
        ("echo", VIP, backends[0]),
        ("v1", "10.96.0.11", backends[0]),
        ("v2", "10.96.0.12", backends[1]),
    ]
    (directory / "world.yaml").write_text(
        WORLD + "".join(SERVICE.format(name=n, vip=v, port=b.http_ports[0]) for n, v, b in services)
    )
    world = Setup(directory, publish.xds_options(opts), ca)
    world.write_route("v1")
    try:
        yield world
    finally:
        for backend in backends:
            backend.stop_background()


class HboneTraffic:
    """HBONE requests back to back on one client connection; who answered, what failed."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.setup.client() as hbone:
            while not self._stop.is_set():
                try:
                    resp = hbone.request(AUTHORITY, path="/")
                except Exception as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if resp.status == 200:
                    self.answers.append(echo.parse_echo(resp.body).hostname)
                else:
                    self.failures.append(f"status {resp.status}: {resp.body[:200]!r}")

    def __enter__(self) -> HboneTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20)


def _who(setup: Setup) -> str:
    with setup.client() as hbone:
        resp = hbone.request(AUTHORITY, path="/")
    assert resp.status == 200, resp.body
    return echo.parse_echo(resp.body).hostname


@pytest.mark.parametrize("delta", VARIANTS)
def test_editing_the_httproute_file_moves_traffic_without_a_failed_request(
    envoy: conftest.EnvoyStarter, setup: Setup, delta: bool
) -> None:
    snapshots = cache.SnapshotCache()
    source = filesource.FileSource(setup.directory, snapshots, setup.opts, poll_interval=0.05)
    with runner.ServerThread(snapshots) as xds:
        source.start()
        try:
            assert source.last is not None
            assert source.last.pushed == (KEY,)
            assert source.last.problems == ()
            proc = envoy(setup.bootstrap(xds.target, delta), setup.opts.admin_port)
            assert _who(setup) == "v1"
            with HboneTraffic(setup) as traffic:
                support.wait_for(lambda: traffic.answers.count("v1") >= 10, what="traffic to v1")
                setup.write_route("v2")
                support.wait_for(lambda: traffic.answers.count("v2") >= 10, what="traffic to v2")
            assert traffic.failures == []
            assert traffic.answers[-1] == "v2"
            support.wait_for(lambda: snapshots.last_good(KEY) == snapshots.get(KEY), what="applied")
            assert snapshots.error(KEY) is None
            names = support.config_names(proc)
            assert "outbound|80||v2.demo.svc.cluster.local" in names["clusters"]
            # Certificates came over ADS too (SDS secrets naming the PEM files).
            assert names["secrets"] == {"ROOTCA", "default"}
            assert proc.process.poll() is None
        finally:
            source.stop()


def test_a_broken_file_keeps_the_last_good_config(
    envoy: conftest.EnvoyStarter, setup: Setup
) -> None:
    snapshots = cache.SnapshotCache()
    source = filesource.FileSource(setup.directory, snapshots, setup.opts)
    first = source.reload()
    assert first.pushed == (KEY,)
    good = snapshots.get(KEY)
    with runner.ServerThread(snapshots) as xds:
        envoy(setup.bootstrap(xds.target, delta=True), setup.opts.admin_port)
        assert _who(setup) == "v1"
        (setup.directory / "route.yaml").write_text("kind: HTTPRoute\nspec: [unbalanced\n")
        broken = source.reload()
        assert broken.pushed == ()
        assert broken.unchanged == (KEY,)
        assert [p.source for p in broken.problems] == [str(setup.directory / "route.yaml")]
        assert "keeping its last good objects" in broken.problems[0].message
        assert snapshots.get(KEY) == good
        assert _who(setup) == "v1"
        # An HTTPRoute to a Service that does not exist is reported, the rest still serves.
        (setup.directory / "route.yaml").write_text(ROUTE.format(backend="missing"))
        unresolved = source.reload()
        assert any("HTTPRoute" in p.source for p in unresolved.problems)
        setup.write_route("v2")
        fixed = source.reload()
        assert fixed.pushed == (KEY,)
        assert fixed.problems == ()
        support.wait_for(lambda: _who(setup) == "v2", what="the fixed route")


def test_serve_command_feeds_envoy(envoy: conftest.EnvoyStarter, setup: Setup) -> None:
    port, metrics_port = conftest.free_port(), conftest.free_port()
    opts = setup.opts
    command = [
        sys.executable, "-m", "waypoint", "serve",
        "-f", str(setup.directory),
        "--xds-listen", f"127.0.0.1:{port}",
        "--trust-domain", TD,
        "--cert-dir", opts.cert_dir,
        "--bind", opts.bind,
        "--hbone-port", str(opts.hbone_port),
        "--admin-port", str(opts.admin_port),
        "--readiness-port", str(opts.readiness_port),
        "--stats-port", str(opts.stats_port),
        "--poll-interval", "0.05",
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    log = setup.directory.parent / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sink, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        assert f"serving xDS on 127.0.0.1:{port}" in banner, log.read_text()
        assert "demo/waypoint" in banner
        envoy(setup.bootstrap(f"127.0.0.1:{port}", delta=False), opts.admin_port)
        assert _who(setup) == "v1"
        setup.write_route("v2")
        support.wait_for(lambda: _who(setup) == "v2", what="the edited route")
        # The readiness listener also came over xDS.
        ready = f"http://127.0.0.1:{opts.readiness_port}/healthz/ready"
        with urllib.request.urlopen(ready, timeout=5) as resp:
            assert resp.status == 200
        scrape = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(scrape, timeout=5) as resp:
            exposition = resp.read().decode()
        assert 'waypoint_xds_streams{variant="sotw",waypoint="demo/waypoint"} 1.0' in exposition
        assert 'waypoint_xds_pushes_total{type="Listener",waypoint="demo/waypoint"}' in exposition
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)
    assert server.returncode == 0, log.read_text()

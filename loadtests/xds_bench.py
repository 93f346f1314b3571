"""xDS benchmark: how fast a file edit reaches traffic, and what a snapshot costs to build.

Run: ``python -m loadtests.xds_bench`` (``--help`` for sizes and rounds). Not a test: it prints
figures, which docs/xds.md records. Two measurements:

1. **Edit to traffic.** ``waypoint serve``'s parts (file watcher, cache, ADS server) feed a real
   Envoy a world of N Services, each with an HTTPRoute. One route's file is rewritten to point
   at another backend while another process sends HBONE requests (about 100/s); the figure is
   the time from the write to the first answer from the new backend (watcher poll and
   debounce included, at the ``waypoint serve`` defaults). ``reload`` is the watcher's share:
   parse, translate, build.
2. **Translate and build.** For N Services each with an HTTPRoute: the time to translate the
   objects, build the Envoy resources and pack them into a snapshot, and the peak Python memory
   of doing so (tracemalloc, in a separate pass so that it does not skew the times).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import pathlib
import queue
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import yaml

from waypoint import pipeline, pki
from waypoint.envoy import options as envoy_options
from waypoint.envoy import resources
from waypoint.local import ca as dev_ca
from waypoint.local import echo
from waypoint.local.hbone import client as hbone_client
from waypoint.runtime import collector, envoy_process
from waypoint.xds import bootstrap, cache, filesource, naming, publish, runner, snapshot

TD = "cluster.local"
NS = "bench"
KEY = naming.WaypointKey(NS, "waypoint")
EDITED_VIP = "10.96.0.10"


def _vip(index: int) -> str:
    return f"10.97.{index // 250}.{index % 250 + 1}"


def _service(name: str, vip: str, port: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "clusterIP": vip,
                "ports": [{"name": "http", "port": 80, "targetPort": port, "appProtocol": "http"}],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-1",
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        },
    ]


def _route(name: str, backend: str, index: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": name, "port": 80}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": f"/api/{index}"}}],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "x-route", "value": name}]},
                        }
                    ],
                    "backendRefs": [{"name": backend, "port": 80}],
                },
                {"backendRefs": [{"name": backend, "port": 80}]},
            ],
        },
    }


def _base() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NS, "labels": {"istio.io/use-waypoint": "waypoint"}},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {
                "name": "waypoint",
                "namespace": NS,
                "labels": {"istio.io/waypoint-for": "service"},
            },
            "spec": {
                "gatewayClassName": "waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        },
    ]


def world(services: int, port: int) -> list[dict[str, Any]]:
    """N Services, each with an EndpointSlice and an HTTPRoute of two rules."""
    objects = _base()
    for index in range(services):
        name = f"svc-{index:05d}"
        objects += _service(name, _vip(index), port)
        objects.append(_route(name, name, index))
    return objects


# --- translate and build ------------------------------------------------------------------


def _build(
    objects: list[dict[str, Any]], opts: envoy_options.BootstrapOptions, check_schemas: bool = True
) -> tuple[float, float, float, snapshot.Snapshot]:
    start = time.perf_counter()
    translation = pipeline.translate_objects(objects, TD, check_schemas)
    translated = time.perf_counter()
    waypoint = translation.waypoint(NS, "waypoint")
    assert waypoint is not None, translation.statuses[:3]
    built = resources.build(waypoint, opts)
    resourced = time.perf_counter()
    snap = snapshot.from_resources(built)
    done = time.perf_counter()
    return translated - start, resourced - translated, done - resourced, snap


def bench_build(sizes: list[int], rounds: int, check_schemas: bool = True) -> None:
    opts = publish.xds_options(envoy_options.BootstrapOptions(cert_dir="/certs"))
    print("translate + build + snapshot (median of rounds; cyclic GC paused, as in a reload)")
    print(f"schema checks: {'on' if check_schemas else 'off'}")
    print("memory: Python peak (tracemalloc) and RSS growth while the snapshot is held;")
    print("upb protobuf arenas are C memory, so only RSS sees them")
    print(
        f"{'services':>8} {'translate':>10} {'resources':>10} {'snapshot':>10} {'total':>9} {'resources#':>10} {'bytes':>10} {'peak MiB':>9}"
    )
    for size in sizes:
        objects = world(size, 8080)
        times: list[tuple[float, float, float]] = []
        snap = snapshot.EMPTY
        for _ in range(rounds):
            gc.collect()
            # As the file source does it: cyclic GC paused for the reload.
            with collector.paused():
                translate_s, build_s, pack_s, snap = _build(objects, opts, check_schemas)
            times.append((translate_s, build_s, pack_s))
        medians = [statistics.median(t[i] for t in times) for i in range(3)]
        del snap, times
        gc.collect()
        rss_before = _rss()
        *_, snap = _build(objects, opts)
        rss_growth = _rss() - rss_before
        gc.collect()
        tracemalloc.start()
        _build(objects, opts)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        size_bytes = sum(len(r.body.value) for by in snap.resources.values() for r in by.values())
        print(
            f"{size:>8} {medians[0] * 1000:>8.0f}ms {medians[1] * 1000:>8.0f}ms "
            f"{medians[2] * 1000:>8.0f}ms {sum(medians) * 1000:>7.0f}ms {snap.count():>10} "
            f"{size_bytes:>10} {peak / 2**20:>9.1f} {rss_growth / 2**20:>8.1f}"
        )


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- edit to traffic ----------------------------------------------------------------------


def _traffic(
    port: int, identity_dir: str, authority: str, out: Any, go: Any, stop: Any
) -> None:  # pragma: no cover - runs in the child process
    """Child process: run the two echo backends, then HBONE requests back to back.

    Reports the backends' ports first, then (backend, time) whenever the answering backend
    changes, and ("", time) for every failed request.
    """
    backends = [echo.EchoServer(n, NS, http_ports=(0,)).start_background() for n in ("v1", "v2")]
    out.put(tuple(b.http_ports[0] for b in backends))
    go.wait()
    context = pki.load_identity(identity_dir).ssl_context(server=False)
    client = hbone_client.SyncHboneClient(
        ("127.0.0.1", port), context, expected_trust_domain=TD, timeout=10.0
    )
    last = ""
    with client:
        while not stop.is_set():
            try:
                resp = client.request(authority, path="/")
                who = echo.parse_echo(resp.body).hostname if resp.status == 200 else ""
            except Exception:
                who = ""
            now = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
            if who != last or not who:
                out.put((who, now))
                last = who
            # About 100 requests/s: the figure's resolution, without taking a whole core of the
            # two from the watcher (in production the control plane runs apart from both).
            time.sleep(0.01)
    for backend in backends:
        backend.stop_background()


class _Observer:
    """Backends and traffic in a separate process, so that they do not take the GIL from
    the watcher and the server (in production those run apart from any workload).

    ``first_seen`` maps a backend to when it first answered since :meth:`reset`; every
    request that failed counts in ``failures``.
    """

    def __init__(self, port: int, identity_dir: pathlib.Path, authority: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._seen: Any = ctx.Queue()
        self._go = ctx.Event()
        self._stop = ctx.Event()
        self._process = ctx.Process(
            target=_traffic,
            args=(port, str(identity_dir), authority, self._seen, self._go, self._stop),
            daemon=True,
        )
        self.first_seen: dict[str, float] = {}
        self.failures = 0

    def backend_ports(self) -> tuple[int, int]:
        ports: tuple[int, int] = self._seen.get(timeout=60)
        return ports

    def start_traffic(self) -> None:
        self._go.set()

    def _drain(self) -> None:
        while True:
            try:
                who, when = self._seen.get_nowait()
            except queue.Empty:
                return
            if not who:
                self.failures += 1
            else:
                self.first_seen.setdefault(who, when)

    def wait_for(self, who: str, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while who not in self.first_seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{who} never answered")
            time.sleep(0.002)
            self._drain()
        return self.first_seen[who]

    def reset(self) -> None:
        self._drain()
        self.first_seen = {}

    def __enter__(self) -> _Observer:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(20)
        self._drain()


def _write(path: pathlib.Path, objects: list[dict[str, Any]]) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    os.replace(scratch, path)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bench_edit(services: int, rounds: int, delta: bool, tmp: pathlib.Path) -> list[float]:
    ca = dev_ca.CertificateAuthority.create(TD)
    ca.issue_workload(NS, "waypoint").write(tmp / "certs")
    opts = publish.xds_options(
        envoy_options.BootstrapOptions(
            trust_domain=TD,
            cert_dir=str(tmp / "certs"),
            bind="127.0.0.1",
            hbone_port=_free_port(),
            admin_port=_free_port(),
            readiness_port=_free_port(),
            stats_port=_free_port(),
        )
    )
    sleep_dir = tmp / "sleep"
    ca.issue_workload(NS, "sleep").write(sleep_dir)
    observer = _Observer(opts.hbone_port, sleep_dir, f"{EDITED_VIP}:80")
    with observer:
        return _edits(observer, services, rounds, delta, tmp, opts)


def _edits(
    observer: _Observer,
    services: int,
    rounds: int,
    delta: bool,
    tmp: pathlib.Path,
    opts: envoy_options.BootstrapOptions,
) -> list[float]:
    v1, v2 = observer.backend_ports()
    watched = tmp / "watched"
    watched.mkdir()
    # The edited Service ("echo") and two backends, plus N - 1 other Services with routes.
    filler = world(services - 1, v1)
    _write(
        watched / "world.yaml",
        filler
        + _service("echo", EDITED_VIP, v1)
        + _service("v1", "10.96.0.11", v1)
        + _service("v2", "10.96.0.12", v2),
    )
    _write(watched / "echo-route.yaml", [_route("echo", "v1")])
    snapshots = cache.SnapshotCache()
    source = filesource.FileSource(watched, snapshots, opts)
    latencies: list[float] = []
    reloads: list[float] = []
    try:
        with runner.ServerThread(snapshots) as xds:
            source.start()
            config = tmp / "envoy.yaml"
            config.write_text(
                yaml.safe_dump(bootstrap.build(xds.target, NS, "waypoint", opts, delta=delta))
            )
            with envoy_process.running(config, opts.admin_port, tmp / "envoy.log", timeout=120):
                observer.start_traffic()
                observer.wait_for("v1")
                for index in range(rounds):
                    target = "v2" if index % 2 == 0 else "v1"
                    observer.reset()
                    written = time.monotonic()
                    _write(watched / "echo-route.yaml", [_route("echo", target)])
                    latencies.append(observer.wait_for(target) - written)
                    assert source.last is not None
                    reloads.append(source.last.seconds)
                    time.sleep(0.3)
                observer.reset()
                failures = observer.failures
    finally:
        source.stop()
    variant = "delta" if delta else "sotw"
    print(
        f"{services:>8} {variant:>6} {statistics.median(latencies) * 1000:>8.0f}ms "
        f"{max(latencies) * 1000:>8.0f}ms {statistics.median(reloads) * 1000:>8.0f}ms "
        f"{rounds:>6} {failures:>8}"
    )
    return latencies


def _tmpdirs() -> Iterator[pathlib.Path]:
    while True:
        with tempfile.TemporaryDirectory(prefix="xds-bench-") as tmp:
            yield pathlib.Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="100,1000,5000", help="Service counts for the build figures"
    )
    parser.add_argument(
        "--edit-sizes", default="100,1000", help="Service counts for the edit figures"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-edit", action="store_true")
    parser.add_argument(
        "--no-schema-check",
        action="store_true",
        help="translate without the schema checks, to measure what they cost",
    )
    args = parser.parse_args()
    bench_build([int(s) for s in args.sizes.split(",")], args.rounds, not args.no_schema_check)
    if args.skip_edit:
        return
    print()
    print("file edit -> new backend answers (serve defaults: poll 0.1 s, debounce 0.05 s)")
    print(
        f"{'services':>8} {'proto':>6} {'median':>10} {'max':>10} {'reload':>10} {'rounds':>6} {'failures':>8}"
    )
    dirs = _tmpdirs()
    for size in [int(s) for s in args.edit_sizes.split(",")]:
        for delta in (False, True):
            bench_edit(size, args.rounds, delta, next(dirs))


if __name__ == "__main__":
    main()

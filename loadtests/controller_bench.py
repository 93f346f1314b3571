"""Controller benchmark: cold convergence, memory, and the API cost of one change, at scale.

Run: ``python -m loadtests.controller_bench`` (``--help`` for sizes). Not a test: it prints
figures, which docs/controller.md records. The fake API server of ``tests/fakekube`` runs in
this process and counts every request it serves; ``waypoint controller`` runs as a separate
process (so its RSS is its own) against it through a kubeconfig, as it would against a cluster.
This process plays the kubelet: every Deployment the controller creates is marked ready.

World: N namespaces, each with a waypoint Gateway and S Services (bound to it by the
``istio.io/use-waypoint`` label) with one EndpointSlice each. Phases:

1. **Cold convergence.** From starting the controller process until every Gateway is
   ``Programmed=True``; the controller's peak RSS (``VmHWM``) and RSS after it.
2. **One Service added** in one namespace, straight into the fake's store as another client's
   write would land: the requests the controller makes until it has been quiet for
   ``--quiet`` seconds, the writes among them, and which namespaces' Gateways it read (a
   reconcile starts by reading its Gateway; the gateway reconcile counter from ``/metrics``
   is reported too).
3. **Steady state.** Nothing changes for ``--steady`` seconds, with ``--resync`` short enough
   that resyncs happen inside the window: writes, GETs, and GETs per Gateway reconcile.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from tests.fakekube import faulty, world
from waypoint.kube import gateway

GW_API = "gateway.networking.k8s.io/v1"
GATEWAY_PATH = re.compile(r"^/apis/gateway\.networking\.k8s\.io/v1/namespaces/([^/]+)/gateways/")
RECONCILES = re.compile(
    r'^waypoint_controller_reconciles_total\{kind="([^"]+)",result="ok"\} (\S+)$'
)


Entry = tuple[float, str, str]  # (monotonic time, method or WATCH, path)


def log_since(fake: faulty.FaultyKube, start: int) -> list[Entry]:
    return [(r.at, r.method, r.path) for r in fake.requests_since(start)]


def namespace_objects(ns: str, services: int, first_ip: int) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [world.namespace(ns)]
    for index in range(services):
        name = f"svc-{index}"
        ip = first_ip + index
        objects.append(
            world.service(ns, name, f"10.{96 + ip // 65536}.{ip // 256 % 256}.{ip % 256}")
        )
        objects.append(
            world.endpoint_slice(ns, name, f"10.{ip // 65536}.{ip // 256 % 256}.{ip % 256}")
        )
    gw = gateway.generate_gateway(ns)
    objects.append(gw)
    return objects


def seed(fake: faulty.FaultyKube, namespaces: int, services: int) -> list[str]:
    names = [f"bench-{index:03d}" for index in range(namespaces)]
    fake.seed([world.gateway_class()])
    for index, ns in enumerate(names):
        fake.seed(namespace_objects(ns, services, 1000 + index * (services + 1)))
    return names


def _unready(deployment: Mapping[str, Any]) -> bool:
    return not (deployment.get("status") or {}).get("readyReplicas")


def kubelet(fake: faulty.FaultyKube, stop: threading.Event) -> None:
    """Mark every Deployment ready once it exists (outside the request counts)."""
    while not stop.wait(0.5):
        if not fake.count("apps/v1", "Deployment", _unready):
            continue  # nothing to do: skip deep-copying every Deployment
        for deployment in fake.objects("apps/v1", "Deployment"):
            if _unready(deployment):
                meta = deployment["metadata"]
                world.mark_ready(fake, meta["namespace"], meta["name"])


def _is_programmed(gw: Mapping[str, Any]) -> bool:
    conditions = (gw.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Programmed" and c.get("status") == "True" for c in conditions)


def programmed(fake: faulty.FaultyKube) -> int:
    # Counted in place: copying 200 Gateways four times a second cost the harness CPU that
    # the controller under measurement competes for on a 2-core machine.
    return fake.count(GW_API, "Gateway", _is_programmed)


def rss_kib(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def reconciles(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = RECONCILES.match(line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def wait_quiet(fake: faulty.FaultyKube, quiet: float, limit: float, since: float = 0.0) -> float:
    """Wait until no request (watch restarts aside) arrived for ``quiet`` s after ``since``;
    the last one's time."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        requests = [entry for entry in log_since(fake, 0) if entry[1] != "WATCH"]
        last = max(requests[-1][0] if requests else 0.0, since)
        if time.monotonic() - last >= quiet:
            return last
        time.sleep(0.2)
    print(f"the controller was still busy after {limit:.0f}s; measuring anyway", file=sys.stderr)
    return time.monotonic()


def summarize(entries: list[Entry]) -> dict[str, Any]:
    by_method = collections.Counter(method for _, method, _ in entries)
    gateway_namespaces = sorted(
        {
            match.group(1)
            for _, method, path in entries
            if method == "GET" and (match := GATEWAY_PATH.match(path))
        }
    )
    return {
        "requests": sum(count for method, count in by_method.items() if method != "WATCH"),
        "by_method": dict(sorted(by_method.items())),
        "writes": sum(
            count for method, count in by_method.items() if method not in ("GET", "WATCH")
        ),
        "gateway_namespaces_read": gateway_namespaces,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_average() -> str:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "namespaces": args.namespaces,
        "services_per_namespace": args.services,
        "resync_s": args.resync,
        "load_average_before": load_average(),
    }
    fake = faulty.FaultyKube(bookmark_interval=1.0)
    fake.start()
    with tempfile.TemporaryDirectory() as tmp:
        names = seed(fake, args.namespaces, args.services)
        kubeconfig = fake.write_kubeconfig(pathlib.Path(tmp) / "kubeconfig")
        metrics_port = free_port()
        command = [
            sys.executable,
            "-m",
            "waypoint",
            "controller",
            "--kubeconfig",
            str(kubeconfig),
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            "--resync",
            f"{args.resync}s",
            "--log-level",
            "error",
            *args.controller_arg,
        ]
        stop = threading.Event()
        threading.Thread(target=kubelet, args=(fake, stop), daemon=True).start()
        started = time.monotonic()
        proc = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            result.update(cold(fake, proc, started, len(names), args))
            if result["cold_convergence_s"] is not None:  # else the rest would measure noise
                result.update(add_one_service(fake, metrics_port, names, args))
                if args.steady > 0:
                    result.update(steady(fake, metrics_port, len(names), args))
            result["rss_end_kib"] = rss_kib(proc.pid)["VmRSS"]
            result["peak_rss_kib"] = rss_kib(proc.pid)["VmHWM"]
        finally:
            stop.set()
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            fake.stop()
    result["load_average_after"] = load_average()
    return result


def cold(
    fake: faulty.FaultyKube,
    proc: subprocess.Popen[bytes],
    started: float,
    gateways: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    deadline = started + args.limit
    while programmed(fake) < gateways:
        if proc.poll() is not None:
            raise RuntimeError(f"the controller exited with {proc.returncode}")
        if time.monotonic() > deadline:
            return {
                "cold_convergence_s": None,
                "programmed_at_limit": f"{programmed(fake)}/{gateways} after {args.limit:.0f} s",
                "rss_at_convergence_kib": rss_kib(proc.pid)["VmRSS"],
                "cold_requests": summarize(log_since(fake, 0))["by_method"],
            }
        time.sleep(0.25)
    converged = time.monotonic() - started
    memory = rss_kib(proc.pid)
    return {
        "cold_convergence_s": round(converged, 1),
        "rss_at_convergence_kib": memory["VmRSS"],
        "cold_requests": summarize(log_since(fake, 0))["by_method"],
    }


def add_one_service(
    fake: faulty.FaultyKube, metrics_port: int, names: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    wait_quiet(fake, args.quiet, args.limit)
    before = reconciles(metrics_port)
    start = fake.request_count
    ns = names[len(names) // 2]
    added = time.monotonic()
    fake.seed([world.service(ns, "added", "10.200.0.1")])
    last = wait_quiet(fake, args.quiet, args.limit, since=added)
    entries = log_since(fake, start)
    after = reconciles(metrics_port)
    summary = summarize(entries)
    return {
        "add_service": {
            "namespace": ns,
            **summary,
            "settled_s": round(max(last - added, 0.0), 1),
            "reconciles": {k: after.get(k, 0) - before.get(k, 0) for k in after},
        }
    }


def steady(
    fake: faulty.FaultyKube, metrics_port: int, gateways: int, args: argparse.Namespace
) -> dict[str, Any]:
    before = reconciles(metrics_port)
    start = fake.request_count
    time.sleep(args.steady)
    entries = log_since(fake, start)
    after = reconciles(metrics_port)
    summary = summarize(entries)
    gateway_reconciles = after.get("gateway", 0) - before.get("gateway", 0)
    gets = summary["by_method"].get("GET", 0)
    return {
        "steady": {
            "window_s": args.steady,
            "writes": summary["writes"],
            "gets": gets,
            "by_method": summary["by_method"],
            "gateway_reconciles": gateway_reconciles,
            "gets_per_gateway_reconcile": round(gets / gateway_reconciles, 2)
            if gateway_reconciles
            else None,
            "resyncs_in_window": round(gateway_reconciles / gateways, 2),
        }
    }


def report(result: Mapping[str, Any]) -> str:
    head = [
        f"namespaces={result['namespaces']} services/ns={result['services_per_namespace']} "
        f"load average {result['load_average_before']} -> {result['load_average_after']}",
        f"cold convergence: {result['cold_convergence_s']} s "
        f"{result.get('programmed_at_limit', '')}; RSS at convergence "
        f"{result['rss_at_convergence_kib'] / 1024:.0f} MiB, peak {result['peak_rss_kib'] / 1024:.0f} MiB",
    ]
    if "add_service" not in result:
        return "\n".join(head)
    add = result["add_service"]
    steady_state = result.get("steady")
    lines = [
        *head,
        f"one Service added in {add['namespace']}: {add['requests']} requests "
        f"({add['by_method']}), {add['writes']} writes, Gateways read in "
        f"{len(add['gateway_namespaces_read'])} namespace(s), reconciles {add['reconciles']}, "
        f"settled after {add['settled_s']} s",
    ]
    if steady_state:
        lines.append(
            f"steady state over {steady_state['window_s']} s: {steady_state['writes']} writes, "
            f"{steady_state['gets']} GETs, {steady_state['gateway_reconciles']} Gateway "
            f"reconciles ({steady_state['gets_per_gateway_reconcile']} GETs each)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=200)
    parser.add_argument("--services", type=int, default=5, help="Services per namespace")
    parser.add_argument("--resync", type=float, default=120.0, help="the controller's --resync, s")
    parser.add_argument("--steady", type=float, default=250.0, help="steady-state window, s")
    parser.add_argument(
        "--quiet", type=float, default=4.0, help="idle time that counts as settled, s"
    )
    parser.add_argument("--limit", type=float, default=900.0, help="give up on a phase after, s")
    parser.add_argument(
        "--controller-arg", action="append", default=[], help="extra flag for the controller"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain kill must still stop the controller process (``run``'s finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else report(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What ext_authz costs behind Envoy, three configurations in one run.

1. ``envoy``: Envoy alone (the route answers 200 itself, so nothing else is measured);
2. ``floor``: the same plus ext_authz to a bare allow-all Python gRPC server
   (:mod:`loadtests.floor_authz`), the least any Python ext_authz can add;
3. ``full``: the same plus ext_authz to extauthz doing the whole check: RS256 JWT (the same
   valid token on every request, as a client reusing its token would send) and the embedded
   Rego policy, decision log on.

One Envoy serves all three on three listeners; phases run one after another and, with
``--rounds``, interleave (envoy, floor, full, envoy, ...) so a machine-load drift hits all
three alike. Each configuration gets a fixed-rate phase (latency at ``--rate``) and a
saturation phase (throughput with ``--sat-connections`` closed-loop connections). The load
generator is ``hey`` (Debian package ``hey``); its absence is reported with the install command.

    python -m loadtests.extauthz_bench                 # 1,000 rps, 20 s per phase
    python -m loadtests.extauthz_bench --rate 1000 --duration 30 --rounds 2 --connections 1
    python -m loadtests.extauthz_bench --full-processes 2      # two ports, Envoy balances
    python -m loadtests.extauthz_bench --full-workers 2        # one port, SO_REUSEPORT
    python -m loadtests.extauthz_bench --h2-floor              # + allow-all on extauthz's transport
    python -m loadtests.extauthz_bench --full-transport grpcio # extauthz on grpc.aio

Targets: full throughput >= 0.8x the floor's; full p99 at the rate <= the floor's.
All traffic is on 127.0.0.1; every phase is bounded by ``hey -z``. hey leaves failed
requests (resets, timeouts) out of its CSV, so each phase also reads the front Envoy's
``downstream_rq_total`` for its listener: requests Envoy received that hey never recorded
are reported as ``lost``, and like non-200 ``errors`` they make the run exit 1.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml

from loadtests import authz, envoyconf, procs, recorder
from waypoint.runtime import envoy_process

CONFIGS = ("envoy", "floor", "full")
H2_FLOOR = "floor-h2"  # allow-all on extauthz's own transport, with --h2-floor
INSTALL_HINT = "hey is not installed: `apt-get install -y hey` (Debian/Ubuntu), then rerun"
PATH = "/admin/orders"
REQUESTS_STAT = "http.{}.downstream_rq_total"  # each listener's stat_prefix is its config name


class BenchError(RuntimeError):
    """The benchmark could not run (missing tool, a process that did not start)."""


@dataclasses.dataclass
class Phase:
    """One hey run's samples (seconds) and statuses, plus the CPU the servers spent on it."""

    config: str
    mode: str  # "rate" or "saturate"
    latencies: list[float]
    statuses: dict[int, int]
    seconds: float
    cpu: dict[str, float]
    recorded: int  # hey's CSV rows over the whole phase, warm-up included
    envoy_requests: int  # what the front Envoy's listener received over the same phase

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != 200)

    @property
    def lost(self) -> int:
        """Requests Envoy received that hey never recorded: hey drops failures from its CSV."""
        return max(0, self.envoy_requests - self.recorded)


def hey_binary() -> str:
    found = shutil.which("hey")
    if found is None:
        raise BenchError(INSTALL_HINT)
    return found


def parse_hey_csv(text: str, warmup: float) -> tuple[list[float], dict[int, int], float]:
    """Latencies (s) after ``warmup`` seconds, status counts, and the measured span (s)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    first = last = None
    for row in csv.DictReader(text.splitlines()):
        offset = float(row["offset"])
        if offset < warmup:
            continue
        code = int(row["status-code"])
        statuses[code] = statuses.get(code, 0) + 1
        latencies.append(float(row["response-time"]))
        first = offset if first is None else min(first, offset)
        last = offset if last is None else max(last, offset)
    span = (last - first) if first is not None and last is not None else 0.0
    return latencies, statuses, span


def run_hey(url: str, token: str, duration: float, connections: int, rate: float | None) -> str:
    argv = [hey_binary(), "-z", f"{duration:g}s", "-c", str(connections), "-o", "csv"]
    argv += ["-H", f"Authorization: Bearer {token}", "-disable-compression"]
    if rate is not None:
        argv += ["-q", str(max(1, math.ceil(rate / connections)))]
    proc = subprocess.run(
        [*envoy_process.die_with_parent(), *argv, url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"hey failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (``extauthz serve --workers``)."""
    try:
        kids = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return procs.usage(pid).cpu_seconds + sum(procs.usage(int(k)).cpu_seconds for k in kids)


def start_extauthz_workers(
    name: str, workdir: pathlib.Path, doc: dict[str, Any], decision_log: bool, workers: int
) -> procs.Child:
    """``extauthz serve --workers N`` on one port, until every worker is ready."""
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    metrics_port = procs.free_ports(workers)
    doc = {
        **doc,
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        "decision_log": str(home / "decisions.log") if decision_log else "off",
    }
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    argv = [procs.PYTHON, "-m", "extauthz.cli", "serve", "--config", str(config)]
    argv += ["--workers", str(workers), "--log-level", "WARNING"]
    child = procs.spawn(name, argv, home / "extauthz.log", cwd=authz.REPO)
    try:
        child.wait_until(
            lambda: all(procs.extauthz_ready(metrics_port + i) for i in range(workers))
        )
    except BaseException:
        child.stop()
        raise
    return child


@dataclasses.dataclass
class Rig:
    """The running Envoy and the two authz servers, with each config's URL."""

    envoy: envoy_process.EnvoyProcess
    servers: dict[str, list[procs.Child]]
    urls: dict[str, str]

    def cpu(self) -> dict[str, float]:
        out = {"envoy": procs.usage(self.envoy.process.pid).cpu_seconds}
        for name, children in self.servers.items():
            out[name] = sum(tree_cpu(child.pid) for child in children)
        return out

    def envoy_requests(self, config: str) -> int:
        """Requests the front Envoy's listener for ``config`` has received so far."""
        return procs.envoy_counter(self.envoy, REQUESTS_STAT.format(config))

    def stop(self) -> None:
        self.envoy.stop()
        for children in self.servers.values():
            for child in children:
                child.stop()


def start_rig(
    workdir: pathlib.Path,
    full_processes: int,
    decision_log: bool = True,
    full_workers: int = 1,
    full_transport: str = "h2",
    h2_floor: bool = False,
) -> Rig:
    names = (*CONFIGS, H2_FLOOR) if h2_floor else CONFIGS
    ports = {name: procs.free_port() for name in names}
    floor_port, h2_floor_port = procs.free_port(), procs.free_port()
    full_ports = [procs.free_port() for _ in range(full_processes)]
    servers: dict[str, list[procs.Child]] = {"floor": [], "full": []}
    rig: Rig | None = None
    try:
        servers["floor"].append(authz.start_floor(workdir, floor_port))
        if h2_floor:
            servers[H2_FLOOR] = [authz.start_floor(workdir, h2_floor_port, H2_FLOOR, "h2")]
        for i, port in enumerate(full_ports):
            doc = {**authz.bench_config(f"127.0.0.1:{port}"), "transport": full_transport}
            if full_workers > 1:
                started = start_extauthz_workers(
                    f"extauthz-{i}", workdir, doc, decision_log, full_workers
                )
            else:
                started = authz.start_extauthz(f"extauthz-{i}", workdir, doc, decision_log)
            servers["full"].append(started)
        hops = [
            envoyconf.Hop("envoy", ports["envoy"]),
            envoyconf.Hop("floor", ports["floor"], authz=(("127.0.0.1", floor_port),)),
            envoyconf.Hop("full", ports["full"], authz=tuple(("127.0.0.1", p) for p in full_ports)),
        ]
        if h2_floor:
            hops.append(
                envoyconf.Hop(H2_FLOOR, ports[H2_FLOOR], authz=(("127.0.0.1", h2_floor_port),))
            )
        admin = procs.free_port()
        config = workdir / "envoy.yaml"
        config.write_text(yaml.safe_dump(envoyconf.bootstrap(hops, admin), sort_keys=False))
        proxy = envoy_process.start(config, admin, workdir / "envoy.log")
        rig = Rig(proxy, servers, {n: f"http://127.0.0.1:{p}{PATH}" for n, p in ports.items()})
        proxy.wait_ready()
        return rig
    except BaseException:
        if rig is not None:
            rig.stop()
        else:
            for children in servers.values():
                for child in children:
                    child.stop()
        raise


def run_phase(rig: Rig, config: str, mode: str, token: str, args: argparse.Namespace) -> Phase:
    rate = args.rate if mode == "rate" else None
    connections = args.connections if mode == "rate" else args.sat_connections
    duration = args.duration if mode == "rate" else args.sat_duration
    before, counted = rig.cpu(), rig.envoy_requests(config)
    text = run_hey(rig.urls[config], token, duration, connections, rate)
    # hey waits for its in-flight requests before it exits, so the counters are settled.
    after, now_counted = rig.cpu(), rig.envoy_requests(config)
    # Saturation skips its first second (a quarter of a very short phase): connection set-up.
    warmup = args.warmup if mode == "rate" else min(1.0, args.sat_duration / 4)
    latencies, statuses, span = parse_hey_csv(text, warmup)
    _, everything, _ = parse_hey_csv(text, 0.0)
    cpu = {name: after[name] - before[name] for name in before}
    recorded = sum(everything.values())
    return Phase(config, mode, latencies, statuses, span, cpu, recorded, now_counted - counted)


def summarize(phases: Sequence[Phase], config: str, mode: str) -> dict[str, float]:
    mine = [p for p in phases if p.config == config and p.mode == mode]
    latencies = sorted(x * 1000.0 for p in mine for x in p.latencies)
    requests = sum(p.requests for p in mine)
    seconds = sum(p.seconds for p in mine)
    out = {f"p{q:g}": recorder.percentile(latencies, q) for q in (50.0, 90.0, 99.0)}
    out["rps"] = requests / seconds if seconds else math.nan
    out["requests"] = requests
    out["errors"] = sum(p.errors for p in mine)
    out["recorded"] = sum(p.recorded for p in mine)
    out["envoy_requests"] = sum(p.envoy_requests for p in mine)
    out["lost"] = sum(p.lost for p in mine)
    for name in sorted({n for p in mine for n in p.cpu}):
        spent = sum(p.cpu.get(name, 0.0) for p in mine)
        out[f"cpu_{name}_per_1k"] = spent / requests * 1000 if requests else math.nan
    return out


def verdicts(table: dict[str, dict[str, dict[str, float]]]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for the ratio targets."""
    rate, sat = table["rate"], table["saturate"]
    throughput = sat["full"]["rps"] / sat["floor"]["rps"]
    p99 = rate["full"]["p99"] / rate["floor"]["p99"]
    added_full = rate["full"]["p99"] - rate["envoy"]["p99"]
    added_floor = rate["floor"]["p99"] - rate["envoy"]["p99"]
    return [
        ("full-check throughput >= 0.8x the floor", f"{throughput:.2f}x", throughput >= 0.8),
        (
            "full-check p99 <= the floor's p99",
            f"{p99:.2f}x ({rate['full']['p99']:.2f} vs {rate['floor']['p99']:.2f} ms)",
            p99 <= 1.0,
        ),
        (
            "stretch: full adds less p99 than the floor",
            f"+{added_full:.2f} vs +{added_floor:.2f} ms over Envoy alone",
            added_full < added_floor,
        ),
        *_own_floor(table),
    ]


def _own_floor(table: dict[str, dict[str, dict[str, float]]]) -> list[tuple[str, str, bool]]:
    # Not a target: how much the check itself adds over an allow-all answer on the
    # same transport, so a win on transport cannot hide a loss in the check.
    if H2_FLOOR not in table["rate"]:
        return []
    rate, sat = table["rate"], table["saturate"]
    throughput = sat["full"]["rps"] / sat[H2_FLOOR]["rps"]
    p99 = rate["full"]["p99"] / rate[H2_FLOOR]["p99"]
    return [
        (
            "for information: full vs allow-all on the same h2 transport (throughput; p99)",
            f"{throughput:.2f}x; {p99:.2f}x",
            throughput >= 0.8 and p99 <= 1.0,
        )
    ]


def markdown(table: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"Fixed rate {args.rate:g} rps over {args.connections} connection(s), "
        f"{args.duration:g} s x {args.rounds} round(s) per config; saturation "
        f"{args.sat_connections} connections, {args.sat_duration:g} s. Envoy answers "
        "200 itself; "
        f"{args.full_processes} extauthz process(es) x {args.full_workers} worker(s) "
        f"on the {args.full_transport} transport; "
        "decision log "
        f"{'off' if args.no_decision_log else 'on (to a file)'}. "
        "errors: non-200 answers after warm-up; lost: requests Envoy received that hey "
        "never recorded (hey leaves failures out of its CSV), whole phases. Both sum the "
        "rate and saturation phases.",
        "",
        "| config | p50 ms | p90 ms | p99 ms | added p99 ms | rps at rate | errors | lost | max rps (saturated) | Envoy CPU s / 1k req | authz CPU s / 1k req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = table["rate"]["envoy"]["p99"]
    for config in table["rate"]:
        row, sat = table["rate"][config], table["saturate"][config]
        authz_cpu = row.get(f"cpu_{config}_per_1k", math.nan) if config != "envoy" else math.nan
        lines.append(
            f"| {config} | {row['p50']:.2f} | {row['p90']:.2f} | {row['p99']:.2f} | "
            f"{row['p99'] - base:+.2f} | {row['rps']:.0f} | {int(row['errors'] + sat['errors'])} | "
            f"{int(row['lost'] + sat['lost'])} | {sat['rps']:.0f} | {row['cpu_envoy_per_1k']:.3f} | "
            + ("-" if math.isnan(authz_cpu) else f"{authz_cpu:.3f}")
            + " |"
        )
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    reason = recorder.too_few_for_p99(min(int(row["requests"]) for row in table["rate"].values()))
    lines += [
        f"| {goal} | {measured} | {'yes' if met else 'NO'} |"
        if reason is None
        else f"| {goal} | {measured}; {reason} | n/a |"
        for goal, measured, met in verdicts(table)
    ]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.extauthz_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed request rate (rps)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per fixed-rate phase")
    parser.add_argument("--connections", type=int, default=10, help="connections at the fixed rate")
    parser.add_argument(
        "--sat-duration", type=float, default=8.0, help="seconds per saturation phase"
    )
    parser.add_argument("--sat-connections", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds of the three configs"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of each phase not measured"
    )
    parser.add_argument(
        "--full-processes", type=int, default=1, help="extauthz processes Envoy balances across"
    )
    parser.add_argument(
        "--full-workers",
        type=int,
        default=1,
        help="worker processes per extauthz sharing its port (extauthz serve --workers N)",
    )
    parser.add_argument(
        "--full-transport",
        choices=("h2", "grpcio"),
        default="h2",
        help="extauthz's gRPC transport (config key transport; default h2)",
    )
    parser.add_argument(
        "--h2-floor",
        action="store_true",
        help=f"also measure {H2_FLOOR}: the allow-all floor on extauthz's own h2 transport",
    )
    parser.add_argument(
        "--no-decision-log",
        action="store_true",
        help="run extauthz with decision_log: off (default: on, to a file, as in production)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="default: loadtests/results/extauthz-<timestamp>",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        hey_binary()
    except BenchError as exc:
        print(f"extauthz_bench: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: pathlib.Path = (
        args.out or pathlib.Path(__file__).resolve().parent / "results" / f"extauthz-{stamp}"
    )
    out.mkdir(parents=True, exist_ok=True)
    token = authz.demo_tokens()["admin"]
    print(f"extauthz bench -> {out}", flush=True)
    rig = start_rig(
        out,
        args.full_processes,
        not args.no_decision_log,
        args.full_workers,
        args.full_transport,
        args.h2_floor,
    )
    configs = (*CONFIGS, H2_FLOOR) if args.h2_floor else CONFIGS
    phases: list[Phase] = []
    try:
        plan = [(c, "rate") for _ in range(args.rounds) for c in configs]
        plan += [(c, "saturate") for c in configs]
        for i, (config, mode) in enumerate(plan, 1):
            started = time.monotonic()
            print(f"[{i}/{len(plan)}] {config:6s} {mode:8s} ...", end="", flush=True)
            phase = run_phase(rig, config, mode, token, args)
            phases.append(phase)
            lat = sorted(phase.latencies)
            print(
                f" {phase.requests} req, {phase.requests / max(phase.seconds, 1e-9):.0f} rps, "
                f"p99 {recorder.percentile(lat, 99) * 1000:.2f} ms, {phase.errors} errors, "
                f"{phase.lost} lost "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    finally:
        rig.stop()
    table = {
        mode: {c: summarize(phases, c, mode) for c in configs} for mode in ("rate", "saturate")
    }
    text = markdown(table, args)
    (out / "extauthz-bench.md").write_text(text)
    (out / "extauthz-bench.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": table}, indent=1)
    )
    print()
    print(text)
    clean = all(
        row["errors"] == row["lost"] == 0 for mode in table.values() for row in mode.values()
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())

"""One command that loads the local waypoint path by path and writes the latency table.

    python -m loadtests                       # every path, 1,000 rps, 20 s each
    python -m loadtests --rate 500 --duration 60 --paths direct,waypoint
    python -m loadtests --smoke               # a few seconds per path, a tiny rate
    python -m loadtests --soak                # 10 min at 500 rps: errors and RSS growth
    python -m loadtests --serve               # the world for locust's web UI, 10 min at most

It starts the whole stack with no cluster, on loopback only (:mod:`loadtests.rig`), then runs
locust headless in a subprocess, once per path, at a fixed request rate: ``users`` users of
constant throughput each. The harness itself never imports gevent. For every path it writes
locust's CSVs and HTML report, the exact-latency summary (``<path>-latency.json``), and at the
end ``results.md`` (the table and the goals), ``results.json`` and ``latency.png``.
Every locust run is bounded by ``-t`` and by a hard deadline; everything stops by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from loadtests import authz, procs, report, rig, scenarios

HERE = pathlib.Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
DEFAULT_PATHS = (
    "direct",
    "l4",
    "envoy",
    "waypoint",
    "waypoint-floor",
    "waypoint-authz",
    "waypoint-opa",
)
SERVE_PATHS = ("direct", "l4", "envoy", "waypoint", "waypoint-authz")
SMOKE_PATHS = ("direct", "waypoint", "waypoint-authz", "waypoint-opa")
DEADLINE_SLACK = 60.0
SUSTAINED = 0.95  # below this share of the asked rate, a path is reported as saturated


@dataclasses.dataclass(frozen=True)
class Settings:
    paths: tuple[str, ...]
    rate: float
    duration: float
    warmup: float
    user_rate: float
    out: pathlib.Path
    soak: bool = False
    serve: bool = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--paths", help=f"comma-separated, from: {', '.join(rig.PATHS)}")
    parser.add_argument("--rate", type=float, help="fixed request rate per path (rps)")
    parser.add_argument("--duration", type=float, help="measured seconds per path")
    parser.add_argument("--warmup", type=float, help="seconds per path before measuring")
    parser.add_argument("--user-rate", type=float, default=10.0, help="rps per locust user")
    parser.add_argument("--out", type=pathlib.Path, help="default: loadtests/results/<timestamp>")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="a few seconds per path, tiny rate")
    mode.add_argument("--soak", action="store_true", help="10 min at 500 rps on waypoint-authz")
    mode.add_argument(
        "--serve",
        action="store_true",
        help="start the world and print locust commands for its web UI; stop after --duration "
        "(default 600 s) or Ctrl-C",
    )
    return parser


def settings(argv: Sequence[str] | None = None) -> Settings:
    args = _parser().parse_args(argv)
    paths: tuple[str, ...]
    if args.smoke:
        paths, rate, duration, warmup = SMOKE_PATHS, 20.0, 3.0, 0.5
    elif args.serve:
        paths, rate, duration, warmup = SERVE_PATHS, 100.0, 600.0, 0.0
    elif args.soak:
        paths, rate, duration, warmup = ("waypoint-authz",), 500.0, 600.0, 5.0
    else:
        paths, rate, duration, warmup = DEFAULT_PATHS, 1000.0, 20.0, 3.0
    if args.paths:
        paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    unknown = [p for p in paths if p not in rig.PATHS]
    if unknown:
        raise SystemExit(f"--paths: unknown path(s) {unknown}; choose from {list(rig.PATHS)}")
    rate = args.rate if args.rate is not None else rate
    duration = args.duration if args.duration is not None else duration
    warmup = args.warmup if args.warmup is not None else warmup
    if rate <= 0 or duration <= 0 or warmup < 0 or args.user_rate <= 0:
        raise SystemExit("--rate, --duration and --user-rate must be > 0, --warmup >= 0")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or HERE / "results" / stamp
    return Settings(paths, rate, duration, warmup, args.user_rate, out, args.soak, args.serve)


def machine() -> str:
    model = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({model or platform.processor() or 'unknown'}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


class Progress:
    """One status line per path: rewritten in place on a terminal, every 5 s otherwise."""

    def __init__(self, label: str, total: float, stream: Any = sys.stdout) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_print = 0.0

    def update(self, elapsed: float, row: dict[str, str] | None, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty and not force and now - self._last_print < 5.0:
            return
        self._last_print = now
        done = min(1.0, elapsed / self.total) if self.total else 1.0
        bar = "#" * int(done * 20) + "." * (20 - int(done * 20))
        stats = ""
        if row is not None:
            stats = (
                f"{float(row.get('Requests/s') or 0):6.0f} rps  p50 {row.get('50%', '?')} ms  "
                f"p99 {row.get('99%', '?')} ms  requests {row.get('Total Request Count', '?')}  "
                f"fails {row.get('Total Failure Count', '?')}"
            )
        line = f"  {self.label:16s} [{bar}] {elapsed:4.0f}/{self.total:.0f} s  {stats}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def locust_argv(target: rig.Target, users: int, conf: Settings, prefix: pathlib.Path) -> list[str]:
    host = target.target if target.target.startswith("http") else f"http://{target.target}"
    return [
        procs.PYTHON,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        # Spawning at the total rate spreads the users' phases over one period, so the
        # arrivals are even rather than every user firing at once each period.
        "-r",
        f"{conf.rate:g}",
        "-t",
        f"{math.ceil(conf.duration + conf.warmup)}s",
        "--stop-timeout",
        "5",
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--logfile",
        f"{prefix}-locust.log",
        target.path.user,
    ]


class Meter:
    """CPU deltas and RSS samples of the processes behind one path."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {role: procs.usage(pid) for role, pid in pids.items()}
        self.timeline: list[tuple[float, str, float]] = []
        self.rss: dict[str, list[float]] = {
            role: [u.rss_bytes / 2**20] for role, u in self.start.items()
        }

    def sample(self, elapsed: float) -> None:
        for role, pid in self.pids.items():
            try:
                mb = procs.usage(pid).rss_bytes / 2**20
            except (OSError, ProcessLookupError):
                continue
            self.rss[role].append(mb)
            self.timeline.append((elapsed, role, mb))

    def write_timeline(self, file: pathlib.Path) -> None:
        """RSS over time, one row per process per second (for soak runs)."""
        rows = ["seconds,process,rss_mb"]
        rows += [f"{t:.1f},{role},{mb:.1f}" for t, role, mb in self.timeline]
        file.write_text("\n".join(rows) + "\n")

    def cpu(self, end: dict[str, procs.Usage]) -> dict[str, float]:
        return {role: end[role].cpu_seconds - self.start[role].cpu_seconds for role in end}

    def rss_summary(self) -> dict[str, dict[str, float]]:
        return {
            role: {"start": v[0], "end": v[-1], "max": max(v)} for role, v in self.rss.items() if v
        }


def users_for(conf: Settings) -> int:
    return max(1, math.ceil(conf.rate / conf.user_rate))


def write_spec(target: rig.Target, conf: Settings, tokens: dict[str, str]) -> pathlib.Path:
    """The run spec locust reads for ``target`` (``<out>/<path>-spec.json``)."""
    name = target.path.name
    users = users_for(conf)
    spec = scenarios.RunSpec(
        path=name,
        user=target.path.user,
        target=target.target,
        user_rate=conf.rate / users,
        samples_file=str(conf.out / f"{name}-latency.json"),
        tokens=tokens,
        authority=target.authority,
        cert_dir=str(conf.out / "work" / "client-cert"),
        server_id=target.server_id,
        authz=target.path.authz in ("embedded", "opa"),
        routed=target.path.routed,
        warmup_seconds=conf.warmup,
    )
    return spec.dump(conf.out / f"{name}-spec.json")


def run_locust(target: rig.Target, conf: Settings, tokens: dict[str, str]) -> report.PathResult:
    name = target.path.name
    users = users_for(conf)
    spec_file = write_spec(target, conf, tokens)
    prefix = conf.out / name
    env = {**os.environ, scenarios.SPEC_ENV: str(spec_file), "PYTHONPATH": str(rig.REPO)}
    child = procs.spawn(
        f"locust-{name}",
        locust_argv(target, users, conf, prefix),
        conf.out / f"{name}-locust.out",
        env=env,
        cwd=rig.REPO,
    )
    meter = Meter({**target.metered, "backends": os.getpid(), "loadgen": child.pid})
    total = conf.duration + conf.warmup
    progress = Progress(name, total)
    started = time.monotonic()
    notes: list[str] = []
    last_cpu: dict[str, procs.Usage] = dict(meter.start)
    while child.process.poll() is None:
        elapsed = time.monotonic() - started
        if elapsed > total + DEADLINE_SLACK:
            child.stop(5.0)
            notes.append("locust overran its deadline and was stopped")
            break
        meter.sample(elapsed)
        for role, pid in meter.pids.items():
            try:
                last_cpu[role] = procs.usage(pid)
            except (OSError, ProcessLookupError):
                continue  # loadgen exits between poll and here: keep its last reading
        progress.update(min(elapsed, total), report.history_tail(prefix))
        time.sleep(1.0)
    progress.update(total, report.history_tail(prefix), force=True)
    progress.finish()
    meter.write_timeline(conf.out / f"{name}-rss.csv")
    return _result(target, conf, prefix, meter, last_cpu, notes, child)


def _result(
    target: rig.Target,
    conf: Settings,
    prefix: pathlib.Path,
    meter: Meter,
    last_cpu: dict[str, procs.Usage],
    notes: list[str],
    child: procs.Child,
) -> report.PathResult:
    name = target.path.name
    samples_file = conf.out / f"{name}-latency.json"
    if not samples_file.exists():
        raise RuntimeError(
            f"locust for path {name} wrote no latency summary (exit {child.process.returncode}):\n"
            f"{child.log_tail()}\n{_tail(pathlib.Path(f'{prefix}-locust.log'))}"
        )
    samples = json.loads(samples_file.read_text())
    requests, failures = report.locust_totals(prefix)
    window = float(samples.get("window_seconds") or 0.0)
    if target.path.authz == "opa":
        notes.append(authz.OPA_NOTE)
    rps = samples["requests"] / window if window > 0 else math.nan
    if not rps >= SUSTAINED * conf.rate:
        notes.append(
            f"did not sustain {conf.rate:g} rps ({rps:.0f}): the machine saturated, so its "
            "latency is mostly queueing"
        )
    return report.PathResult(
        path=name,
        title=target.path.title,
        rate=conf.rate,
        duration=conf.duration,
        requests=requests,
        failures=failures,
        rps=rps,
        latency=samples["latency_ms"],
        by_name=samples["by_name"],
        cpu_seconds=meter.cpu(last_cpu),
        rss_mb=meter.rss_summary(),
        errors=samples.get("errors", {}),
        notes=notes,
    )


def _tail(file: pathlib.Path, lines: int = 20) -> str:
    try:
        return "\n".join(file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(conf: Settings, log: Callable[[str], None] = print) -> list[report.PathResult]:
    """Start the world, load each path in turn, write the reports; return the results."""
    conf.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rate": conf.rate,
        "duration": conf.duration,
        "warmup": conf.warmup,
        "soak": conf.soak,
        "command": " ".join(["python -m loadtests", *map(shlex.quote, sys.argv[1:])]),
    }
    log(f"waypoint load test -> {conf.out}")
    log(f"machine: {meta['machine']}; load average {meta['loadavg']}")
    world = rig.Rig(conf.out / "work", log)
    results: list[report.PathResult] = []
    try:
        world.start(need_proxy="envoy" in conf.paths)
        tokens = authz.demo_tokens()
        for i, name in enumerate(conf.paths, 1):
            path = rig.PATHS[name]
            log(f"[{i}/{len(conf.paths)}] {path.title} at {conf.rate:g} rps")
            target = world.prepare(path)
            results.append(run_locust(target, conf, tokens))
    finally:
        world.stop()
        # A path that failed still leaves the reports of those that ran.
        write_reports(results, meta, conf.out)
    return results


def serve(conf: Settings, log: Callable[[str], None] = print) -> None:
    """Keep the world up for ``conf.duration`` seconds (or until Ctrl-C) for locust's web UI.

    The authorization server behind the policy waypoint is the first of ``conf.paths`` that
    needs one; other authorization paths are not served.
    """
    conf.out.mkdir(parents=True, exist_ok=True)
    world = rig.Rig(conf.out / "work", log)
    tokens = authz.demo_tokens()
    try:
        world.start(need_proxy="envoy" in conf.paths)
        kind = ""
        for name in conf.paths:
            path = rig.PATHS[name]
            if path.authz and kind and path.authz != kind:
                log(f"  {name}: skipped (the policy waypoint already serves {kind})")
                continue
            kind = kind or path.authz
            target = world.prepare(path)
            spec_file = write_spec(target, conf, tokens)
            host = f" --host {target.target}" if target.target.startswith("http") else ""
            log(
                f"  {name}: {scenarios.SPEC_ENV}={spec_file} python -m locust "
                f"-f {LOCUSTFILE.relative_to(rig.REPO)}{host} {path.user}"
            )
        log(
            f"run those from {rig.REPO}; serving on 127.0.0.1 for {conf.duration:g} s (Ctrl-C stops)"
        )
        time.sleep(conf.duration)
    except KeyboardInterrupt:
        log("stopping")
    finally:
        world.stop()


def write_reports(
    results: Sequence[report.PathResult], meta: dict[str, Any], out: pathlib.Path
) -> None:
    text = report.markdown(results, meta)
    (out / "results.md").write_text(text)
    report.write_json(results, meta, out / "results.json")
    if results:
        report.chart(results, out / "latency.png")
    print()
    print(text)


def main(argv: Sequence[str] | None = None) -> int:
    conf = settings(argv)
    try:
        if conf.serve:
            serve(conf)
            return 0
        results = run(conf)
    except (rig.RigError, procs.ProcessError, RuntimeError) as exc:
        print(f"loadtests: {exc}", file=sys.stderr)
        return 2
    allowed_failures = sum(r.scenario_failures() for r in results)
    return 1 if allowed_failures else 0


if __name__ == "__main__":
    sys.exit(main())

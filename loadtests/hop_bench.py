"""What a waypoint hop adds to p99, with no Python in the data path.

The harness (``python -m loadtests``) drives locust against Python backends and Python HBONE
terminators, whose noise swamps the hop. Here every process on the data path is native: the
load generator is ``hey`` (Debian package ``hey``), the backend is an Envoy answering 200
itself, and the two ztunnels are stand-in Envoys (:mod:`loadtests.hop_rig`). Four paths, all
on loopback, measured in interleaved rounds (direct, envoy, l4, waypoint, direct, ...) so a
machine-load drift hits all alike:

1. ``direct``: hey -> backend;
2. ``envoy``: hey -> plain Envoy HTTP proxy -> backend (plain hop added = envoy - direct);
3. ``l4``: hey -> client ztunnel -HBONE-> server ztunnel on the pod -> backend (ambient
   without a waypoint);
4. ``waypoint``: hey -> client ztunnel -HBONE(VIP:port)-> our waypoint (rendered by our
   pipeline from ``loadtests/hop-world.yaml``; L7 route with a header match, a path rewrite
   and header rewrites) -HBONE-> server ztunnel -> backend (waypoint hop added = waypoint - l4).

Goals, as ratios within one run: (a) the waypoint hop adds at most 2x the p99 the
plain Envoy hop adds, at 1,000 rps; (b) it adds at most 0.5 ms (Istio's figure, on a quiet
machine). Each path is first probed once (200, and the route's response header present on
the waypoint path only); each phase also records how many requests the waypoint's L7
listener answered and how many HBONE tunnels the waypoint and the pod's side accepted
(the waypoint keeps its upstream tunnels from phase to phase, so later phases may open none).

    python -m loadtests.hop_bench                       # 1,000 rps, 20 s per phase, 2 rounds
    python -m loadtests.hop_bench --rate 50 --duration 2 --rounds 1    # a smoke run
    python -m loadtests.hop_bench --waypoint-access-log off   # the waypoint without its log

``--waypoint-access-log {on,off}`` (default on, as the waypoint ships) renders the waypoint
with or without its per-request JSON access log (``waypoint ... --access-log``); run both to
see what the log costs in the waypoint's CPU per 1k requests.

Results: ``loadtests/results/hop-<timestamp>/hop-bench.{md,json}`` (or ``--out``). Every
phase is bounded by ``hey -z``; every Envoy is stopped on the way out, also on SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import signal
import sys
import time
import types
from collections.abc import Sequence
from typing import Any

from loadtests import extauthz_bench, hop_rig, recorder
from waypoint.commands import args as cli_args

PATHS = hop_rig.PATHS
HOP_ROLE = {"envoy": "proxy", "waypoint": "waypoint"}  # the Envoy each hop adds
ISTIO_P99_MS = 0.5
MAX_RATIO = 2.0
MIB = 1024 * 1024


@dataclasses.dataclass
class Phase:
    """One hey run down one path: samples (s) after warm-up, and what the Envoys counted."""

    path: str
    round: int
    latencies: list[float]
    statuses: dict[int, int]
    seconds: float
    sent: int  # every request of the phase, warm-up included (the CPU and counters span it)
    cpu: dict[str, float]  # role -> CPU seconds spent during the phase
    counts: dict[str, int]  # hop_rig.COUNTERS: what the Envoys counted during the phase

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != 200)

    def problems(self, expected: float) -> list[str]:
        """What is wrong with this phase's outcome, given the requests the rate asked for."""
        out = []
        if self.errors:
            out.append(f"{self.errors} non-200 answers")
        # hey leaves transport errors out of its CSV: a large shortfall is how they show.
        if self.sent < expected / 2:
            out.append(f"only {self.sent} of ~{expected:.0f} requests answered")
        if self.counts["backend_2xx"] < self.sent:
            out.append(f"the backend answered {self.counts['backend_2xx']} of {self.sent}")
        crossed = self.counts["waypoint_2xx"]
        if self.path == "waypoint" and crossed < self.sent:
            out.append(f"only {crossed} of {self.sent} requests crossed the waypoint")
        if self.path != "waypoint" and crossed:
            out.append(f"{crossed} requests crossed the waypoint on the {self.path} path")
        return [f"{self.path} round {self.round}: {problem}" for problem in out]

    def p99_ms(self) -> float:
        return recorder.percentile(sorted(self.latencies), 99.0) * 1000.0

    def record(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "round": self.round,
            "requests": self.requests,
            "sent": self.sent,
            "errors": self.errors,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "seconds": self.seconds,
            "p99_ms": self.p99_ms(),
            "cpu_seconds": self.cpu,
            **self.counts,
        }


def run_phase(rig: hop_rig.HopRig, path: str, round_: int, args: argparse.Namespace) -> Phase:
    before, counted = rig.usage(), rig.counters()
    text = extauthz_bench.run_hey(
        rig.layout.urls()[path], hop_rig.TOKEN, args.duration, args.connections, args.rate
    )
    after, now_counted = rig.usage(), rig.counters()
    latencies, statuses, span = extauthz_bench.parse_hey_csv(text, args.warmup)
    _, everything, _ = extauthz_bench.parse_hey_csv(text, 0.0)
    cpu = {role: after[role].cpu_seconds - before[role].cpu_seconds for role in before}
    return Phase(
        path,
        round_,
        latencies,
        statuses,
        span,
        sum(everything.values()),
        cpu,
        {name: now_counted[name] - counted[name] for name in hop_rig.COUNTERS},
    )


def summarize(phases: Sequence[Phase], path: str) -> dict[str, float]:
    """Pooled percentiles (ms), rate, errors and CPU of one path over all its rounds."""
    mine = [p for p in phases if p.path == path]
    latencies = sorted(x * 1000.0 for p in mine for x in p.latencies)
    requests = sum(p.requests for p in mine)
    seconds = sum(p.seconds for p in mine)
    sent = sum(p.sent for p in mine)
    out = {f"p{q:g}": recorder.percentile(latencies, q) for q in (50.0, 90.0, 99.0)}
    out["max"] = latencies[-1] if latencies else math.nan
    out["rps"] = requests / seconds if seconds else math.nan
    out["requests"] = requests
    out["errors"] = sum(p.errors for p in mine)
    for name in hop_rig.COUNTERS:
        out[name] = sum(p.counts[name] for p in mine)
    out["cpu_all_per_1k"] = _per_1k(sum(sum(p.cpu.values()) for p in mine), sent)
    role = HOP_ROLE.get(path)
    spent = sum(p.cpu.get(role, 0.0) for p in mine) if role else math.nan
    out["cpu_hop_per_1k"] = _per_1k(spent, sent)
    return out


def _per_1k(seconds: float, requests: int) -> float:
    return seconds / requests * 1000.0 if requests else math.nan


@dataclasses.dataclass(frozen=True)
class Added:
    """The two hops' added p99 (ms) and their ratio (NaN when the plain hop adds nothing)."""

    plain: float
    waypoint: float

    @property
    def ratio(self) -> float:
        return self.waypoint / self.plain if self.plain > 0 else math.nan

    @classmethod
    def of(cls, p99: dict[str, float]) -> Added:
        return cls(p99["envoy"] - p99["direct"], p99["waypoint"] - p99["l4"])


def _ratio_verdict(added: Added) -> str:
    if math.isnan(added.ratio) or added.waypoint < 0:
        return "n/a"
    return "yes" if added.ratio <= MAX_RATIO else "NO"


def _budget_verdict(added: Added) -> str:
    if added.waypoint < 0:
        return "n/a"
    return "yes" if added.waypoint <= ISTIO_P99_MS else "NO"


def _with_rounds(text: str, met: str, each: Sequence[str], round_met: Sequence[str]) -> str:
    if len(each) < 2:
        return text
    agree = "" if all(m == met for m in round_met) else "; rounds disagree"
    return f"{text}; per round {', '.join(each)}{agree}"


def verdicts(added: Added, rounds: Sequence[Added] = ()) -> list[tuple[str, str, str]]:
    """(goal, measured, met) for the hop targets, on the pooled p99s.

    ``met`` is yes, NO, or n/a when the measurement cannot decide: the plain hop added
    nothing (no ratio), or the waypoint hop came out negative, i.e. the l4 baseline's own
    noise exceeded the hop. Per-round figures are shown, and flagged when they disagree.
    """
    ratio_met = _ratio_verdict(added)
    if math.isnan(added.ratio):
        ratio_text = f"no ratio: the plain hop added {added.plain:+.3f} ms"
    else:
        ratio_text = f"{added.ratio:.2f}x ({added.waypoint:+.3f} vs {added.plain:+.3f} ms p99)"
    if added.waypoint < 0:
        ratio_text += "; the waypoint hop is below the noise"
    each_ratio = [_fmt(r.ratio, ".2f") + "x" for r in rounds]
    budget_met = _budget_verdict(added)
    budget_text = f"{added.waypoint:+.3f} ms"
    each_budget = [f"{r.waypoint:+.3f} ms" for r in rounds]
    return [
        (
            f"(a) waypoint hop adds <= {MAX_RATIO:g}x the plain Envoy hop's p99",
            _with_rounds(ratio_text, ratio_met, each_ratio, [_ratio_verdict(r) for r in rounds]),
            ratio_met,
        ),
        (
            f"(b) waypoint hop adds <= {ISTIO_P99_MS:g} ms p99 (Istio, quiet machine)",
            _with_rounds(
                budget_text, budget_met, each_budget, [_budget_verdict(r) for r in rounds]
            ),
            budget_met,
        ),
    ]


def gated(rows: list[tuple[str, str, str]], samples: int) -> list[tuple[str, str, str]]:
    """``rows`` with every verdict withheld ("n/a", and why) when a path has too few samples."""
    reason = recorder.too_few_for_p99(samples)
    if reason is None:
        return rows
    return [(goal, f"{measured}; {reason}", "n/a") for goal, measured, _ in rows]


def per_round(phases: Sequence[Phase], rounds: int) -> list[Added]:
    """Each complete round's added p99s."""
    out = []
    for round_ in range(1, rounds + 1):
        p99 = _round_p99(phases, round_)
        if set(p99) == set(PATHS):
            out.append(Added.of(p99))
    return out


def _round_p99(phases: Sequence[Phase], round_: int) -> dict[str, float]:
    return {p.path: p.p99_ms() for p in phases if p.round == round_}


def _fmt(value: float, spec: str = ".3f") -> str:
    return "-" if math.isnan(value) else format(value, spec)


def markdown(report: dict[str, Any], phases: Sequence[Phase], args: argparse.Namespace) -> str:
    table: dict[str, dict[str, float]] = report["table"]
    load = report["load_average"]
    lines = [
        f"Run {report['started']}: {args.rate:g} rps over {args.connections} connection(s), "
        f"{args.duration:g} s per phase ({args.warmup:g} s warm-up dropped) x {args.rounds} "
        f"interleaved round(s); every Envoy --concurrency {args.concurrency}; waypoint access "
        f"log {'on' if args.waypoint_access_log else 'off'}; load average "
        f"{load['before']:.2f} before, {load['after']:.2f} after ({os.cpu_count()} CPUs). "
        "hey reports times in 0.1 ms steps, leaves transport errors out of its CSV (a "
        "shortfall shows in rps and in backend 2xx), and its -q paces each connection on its "
        "own timer, all started together, so requests leave in bursts of up to one per "
        "connection.",
        "",
        "| path | p50 ms | p90 ms | p99 ms | max ms | rps | requests | errors | "
        "backend 2xx | waypoint 2xx | tunnels at waypoint | tunnels at pod | "
        "hop Envoy CPU s / 1k req | all Envoys CPU s / 1k req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in PATHS:
        row = table[path]
        lines.append(
            f"| {path} | {row['p50']:.3f} | {row['p90']:.3f} | {row['p99']:.3f} | "
            f"{row['max']:.3f} | {row['rps']:.0f} | {int(row['requests'])} | "
            f"{int(row['errors'])} | "
            + "".join(f"{int(row[name])} | " for name in hop_rig.COUNTERS)
            + f"{_fmt(row['cpu_hop_per_1k'])} | {_fmt(row['cpu_all_per_1k'])} |"
        )
    added = Added(**report["added"])
    lines += [
        "",
        f"Added p99: plain Envoy hop (envoy - direct) {added.plain:+.3f} ms; waypoint hop "
        f"(waypoint - l4) {added.waypoint:+.3f} ms; ratio {_fmt(added.ratio, '.2f')}x. "
        f"Waypoint Envoy RSS {report['waypoint_rss_bytes'] / MIB:.1f} MiB.",
        "",
        "| round | direct p99 | envoy p99 | l4 p99 | waypoint p99 | plain added | "
        "waypoint added | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for round_ in range(1, args.rounds + 1):
        p99 = _round_p99(phases, round_)
        if set(p99) != set(PATHS):
            continue
        each = Added.of(p99)
        cells = " | ".join(f"{p99[p]:.3f}" for p in PATHS)
        lines.append(
            f"| {round_} | {cells} | {each.plain:+.3f} | {each.waypoint:+.3f} | "
            f"{_fmt(each.ratio, '.2f')} |"
        )
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {goal} | {measured} | {met} |" for goal, measured, met in report["verdicts"]]
    if report["problems"]:
        lines += ["", "Problems (the figures above are not trustworthy):", ""]
        lines += [f"- {problem}" for problem in report["problems"]]
    return "\n".join(lines) + "\n"


def build_report(
    phases: Sequence[Phase],
    probes: Sequence[hop_rig.Probe],
    rig: hop_rig.HopRig,
    extra: dict[str, Any],
) -> dict[str, Any]:
    table = {path: summarize(phases, path) for path in PATHS}
    added = Added.of({path: table[path]["p99"] for path in PATHS})
    rounds = per_round(phases, max((p.round for p in phases), default=0))
    return {
        **extra,
        "layout": dataclasses.asdict(rig.layout),
        "identities": {**rig.ids, "waypoint": rig.waypoint_id},
        "probes": [dataclasses.asdict(p) | {"ok": p.ok} for p in probes],
        "table": table,
        "added": dataclasses.asdict(added),
        "ratio": added.ratio,
        "rounds": [dataclasses.asdict(r) | {"ratio": r.ratio} for r in rounds],
        "verdicts": gated(verdicts(added, rounds), min(int(table[p]["requests"]) for p in PATHS)),
        "phases": [p.record() for p in phases],
    }


def _finite(value: Any) -> Any:
    """``value`` with every NaN as None, so the JSON is strict (NaN is not JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.hop_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed request rate (rps)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=10, help="hey connections")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the paths")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of each phase dropped")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="worker threads of every Envoy (--concurrency)"
    )
    cli_args.add_access_log_flag(parser, "--waypoint-access-log")
    parser.add_argument(
        "--out", type=pathlib.Path, default=None, help="default: loadtests/results/hop-<timestamp>"
    )
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    if args.rate <= 0 or args.duration <= 0 or args.connections < 1 or args.rounds < 1:
        return "--rate and --duration must be > 0, --connections and --rounds >= 1"
    if not 0 <= args.warmup < args.duration:
        return f"--warmup {args.warmup:g} must be >= 0 and below --duration {args.duration:g}"
    if args.concurrency < 1:
        return "--concurrency must be >= 1"
    return None


def _stop_on_sigterm(signum: int, _frame: types.FrameType | None) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop every Envoy.
    raise SystemExit(128 + signum)


def measure(
    rig: hop_rig.HopRig, args: argparse.Namespace
) -> tuple[list[hop_rig.Probe], list[Phase]]:
    """Probe every path once, then (if all answered as they should) run the phases."""
    urls = rig.layout.urls()
    probes = [hop_rig.probe(path, urls[path]) for path in PATHS]
    for result in probes:
        print(
            f"probe {result.path:8s} -> {result.status}, crossed waypoint: "
            f"{result.crossed_waypoint} {'ok' if result.ok else 'FAILED ' + result.detail}",
            flush=True,
        )
    phases: list[Phase] = []
    if not all(result.ok for result in probes):
        return probes, phases  # a broken path would only measure its failure
    plan = [(r, path) for r in range(1, args.rounds + 1) for path in PATHS]
    for i, (round_, path) in enumerate(plan, 1):
        started = time.monotonic()
        print(f"[{i}/{len(plan)}] round {round_} {path:8s} ...", end="", flush=True)
        phase = run_phase(rig, path, round_, args)
        phases.append(phase)
        print(
            f" {phase.requests} req, {phase.requests / max(phase.seconds, 1e-9):.0f} rps, "
            f"p99 {phase.p99_ms():.3f} ms, {phase.errors} errors, "
            + ", ".join(f"{name} {n}" for name, n in phase.counts.items())
            + f" ({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    return probes, phases


def problems(
    probes: Sequence[hop_rig.Probe], phases: Sequence[Phase], args: argparse.Namespace
) -> list[str]:
    """Everything that makes the run's figures untrustworthy (empty when clean)."""
    out = [f"probe {p.path}: {p.status} {p.detail}".strip() for p in probes if not p.ok]
    expected = args.rate * args.duration
    for phase in phases:
        out += phase.problems(expected)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _check_args(args)
    if problem is not None:
        print(f"hop_bench: {problem}", file=sys.stderr)
        return 2
    try:
        extauthz_bench.hey_binary()
    except extauthz_bench.BenchError as exc:
        print(f"hop_bench: {exc}", file=sys.stderr)
        return 2
    now = datetime.datetime.now(datetime.UTC)
    out: pathlib.Path = args.out or (
        pathlib.Path(__file__).resolve().parent
        / "results"
        / f"hop-{now.strftime('%Y%m%dT%H%M%SZ')}"
    )
    out.mkdir(parents=True, exist_ok=True)
    print(f"hop bench -> {out}", flush=True)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    load_before = os.getloadavg()[0]
    rig = hop_rig.HopRig(out / "rig", args.concurrency, access_log=args.waypoint_access_log)
    try:
        print("starting five Envoys: backend, proxy, client/server ztunnels, waypoint", flush=True)
        rig.start()
        probes, phases = measure(rig, args)
        rss = rig.usage()["waypoint"].rss_bytes
    finally:
        rig.stop()
        signal.signal(signal.SIGTERM, previous)
    extra: dict[str, Any] = {
        "started": now.isoformat(timespec="seconds"),
        "args": {k: str(v) for k, v in vars(args).items()},
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "waypoint_rss_bytes": rss,
    }
    extra["problems"] = problems(probes, phases, args)
    if not phases:
        extra["probes"] = [dataclasses.asdict(p) | {"ok": p.ok} for p in probes]
        (out / "hop-bench.json").write_text(json.dumps(extra, indent=1))
        for problem in extra["problems"]:
            print(f"hop_bench: PROBLEM: {problem}", file=sys.stderr)
        print("hop_bench: a path did not answer as it should; nothing measured", file=sys.stderr)
        return 1
    report = build_report(phases, probes, rig, extra)
    text = markdown(report, phases, args)
    (out / "hop-bench.md").write_text(text)
    (out / "hop-bench.json").write_text(json.dumps(_finite(report), indent=1, allow_nan=False))
    print()
    print(text)
    for problem in report["problems"]:
        print(f"hop_bench: PROBLEM: {problem}", file=sys.stderr)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

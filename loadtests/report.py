"""Results of a harness run: read locust's CSVs, then write the Markdown table and the PNG chart.

Latency percentiles come from :mod:`loadtests.recorder` (exact, after the warm-up); request
and failure counts from locust's own ``<path>_stats.csv`` (the whole run). CPU is reported as
seconds per 1,000 requests, which is also vCPU per 1,000 rps: the unit of Istio's sizing
figure. The hop and extauthz goals are evaluated from the paths that were run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from loadtests import recorder

ISTIO = (
    "Istio's published figures (added p90/p99 latency at 1,000 rps): sidecar 0.63–0.88 ms; "
    "ambient L4 0.16–0.20 ms; waypoint 0.40–0.50 ms. Istio 1.24 sized a waypoint at about "
    "0.25 vCPU and 60 MB per 1,000 rps."
)
ALLOWED = "allowed-jwt"


@dataclasses.dataclass
class PathResult:
    """One path's numbers."""

    path: str
    title: str
    rate: float
    duration: float
    requests: int
    failures: int
    rps: float
    latency: dict[str, float]
    by_name: dict[str, dict[str, float]]
    cpu_seconds: dict[str, float]
    rss_mb: dict[str, dict[str, float]]
    errors: dict[str, int]
    notes: list[str] = dataclasses.field(default_factory=list)

    def cpu_per_1k(self, role: str) -> float:
        spent = sum(v for k, v in self.cpu_seconds.items() if k == role or k.startswith(role + ":"))
        if not self.requests or not any(
            k == role or k.startswith(role + ":") for k in self.cpu_seconds
        ):
            return math.nan
        return spent / self.requests * 1000.0

    def scenario_p99(self, name: str = ALLOWED) -> float:
        return float(self.by_name.get(name, {}).get("p99", math.nan))

    def scenario_failures(self, name: str = ALLOWED) -> int:
        return int(self.by_name.get(name, {}).get("failures", 0))


def locust_totals(csv_prefix: pathlib.Path) -> tuple[int, int]:
    """(requests, failures) of the Aggregated row of locust's ``<prefix>_stats.csv``."""
    file = pathlib.Path(f"{csv_prefix}_stats.csv")
    with file.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("Name") == "Aggregated":
                return int(row["Request Count"]), int(row["Failure Count"])
    raise ValueError(f"{file}: no Aggregated row")


def history_tail(csv_prefix: pathlib.Path) -> dict[str, str] | None:
    """The latest Aggregated row of ``<prefix>_stats_history.csv``, if any yet."""
    file = pathlib.Path(f"{csv_prefix}_stats_history.csv")
    try:
        text = file.read_text()
    except OSError:
        return None
    last = None
    for row in csv.DictReader(text.splitlines()):
        if row.get("Name") == "Aggregated":
            last = row
    return last


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _cpu(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def table(results: Sequence[PathResult]) -> str:
    lines = [
        "| path | requests | rps | errors | p50 ms | p90 ms | p99 ms | allowed p99 ms | "
        "Envoy CPU s/1k | authz CPU s/1k | backends CPU s/1k | loadgen CPU s/1k |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.path} | {r.requests} | {r.rps:.0f} | {r.failures} | "
            f"{_ms(r.latency['p50'])} | {_ms(r.latency['p90'])} | {_ms(r.latency['p99'])} | "
            f"{_ms(r.scenario_p99())} | {_cpu(r.cpu_per_1k('envoy'))} | "
            f"{_cpu(r.cpu_per_1k('authz'))} | {_cpu(r.cpu_per_1k('backends'))} | "
            f"{_cpu(r.cpu_per_1k('loadgen'))} |"
        )
    return "\n".join(lines) + "\n"


Goal = tuple[str, str, bool | None]


def goals(results: Sequence[PathResult]) -> list[Goal]:
    """The goals: (goal, measured, met); met is None when a needed path did not run or when a
    path has too few samples for its p99 (the reason is then in ``measured``)."""
    by = {r.path: r for r in results}
    out: list[Goal] = []

    def p99(name: str) -> float:
        return by[name].latency["p99"]

    if {"waypoint", "l4", "envoy", "direct"} <= by.keys():
        hop = p99("waypoint") - p99("l4")
        proxy = p99("envoy") - p99("direct")
        measured = f"{hop:+.2f} ms vs {proxy:+.2f} ms"
        if proxy > 0:
            measured += f" ({hop / proxy:.1f}x)"
        else:
            measured += " (the plain hop's added p99 is below the noise)"
        out.append(
            (
                "waypoint hop adds <= 2x the p99 of a plain Envoy HTTP hop",
                measured,
                proxy > 0 and hop <= 2 * proxy,
            )
        )
        out.append(("waypoint hop adds <= 0.5 ms p99 (Istio)", f"{hop:+.2f} ms", hop <= 0.5))
    else:
        out.append(
            ("waypoint hop vs plain Envoy hop", "needs paths direct, l4, envoy, waypoint", None)
        )
    if {"waypoint-authz", "waypoint-floor"} <= by.keys():
        ours, floor = by["waypoint-authz"].scenario_p99(), by["waypoint-floor"].scenario_p99()
        out.append(
            (
                "extauthz adds no more p99 than the bare Python gRPC floor",
                f"allowed requests: p99 {ours:.2f} ms vs floor {floor:.2f} ms",
                ours <= floor,
            )
        )
    else:
        out.append(("extauthz vs floor", "needs paths waypoint-authz, waypoint-floor", None))
    reason = recorder.too_few_for_p99(min((r.requests for r in results), default=0))
    if reason is not None:
        out = [
            (goal, measured if met is None else f"{measured}; {reason}", None)
            for goal, measured, met in out
        ]
    if "waypoint" in by:
        vcpu = by["waypoint"].cpu_per_1k("envoy")
        out.append(("waypoint <= 0.25 vCPU per 1,000 rps", f"{vcpu:.3f} vCPU", vcpu <= 0.25))
    return out


def markdown(results: Sequence[PathResult], meta: Mapping[str, Any]) -> str:
    lines = [
        f"# Waypoint load test — {meta.get('started', '')}",
        "",
        f"Machine: {meta.get('machine', '')}. Load average at start: {meta.get('loadavg', '')}.",
        f"Rate {meta.get('rate')} rps per path for {meta.get('duration')} s "
        f"(first {meta.get('warmup')} s not measured). Command: `{meta.get('command', '')}`",
        "",
        table(results),
    ]
    for r in results:
        lines.append(f"- **{r.path}**: {r.title}" + "".join(f"; {n}" for n in r.notes))
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for goal, measured, met in goals(results):
        verdict = "not measured" if met is None else ("yes" if met else "NO")
        lines.append(f"| {goal} | {measured} | {verdict} |")
    lines += ["", ISTIO, ""]
    if meta.get("soak"):
        lines += ["## Soak", ""] + [soak_line(r) for r in results] + [""]
    rss = [r for r in results if r.rss_mb]
    if rss:
        lines += ["## Memory (RSS, MB: start → end, max)", ""]
        for r in rss:
            parts = [
                f"{role} {v['start']:.0f} → {v['end']:.0f} (max {v['max']:.0f})"
                for role, v in sorted(r.rss_mb.items())
            ]
            lines.append(f"- {r.path}: " + "; ".join(parts))
        lines.append("")
    return "\n".join(lines)


def soak_line(result: PathResult) -> str:
    """Errors and RSS growth (end minus start) of Envoy and the authorization servers."""
    growth = [
        f"{role} {v['end'] - v['start']:+.1f} MB ({v['start']:.0f} → {v['end']:.0f})"
        for role, v in sorted(result.rss_mb.items())
        if role == "envoy" or role.startswith("authz")
    ]
    return (
        f"- {result.path}: {result.failures} errors in {result.requests} requests; "
        f"RSS growth: {'; '.join(growth) or 'no server measured'}"
    )


def chart(results: Sequence[PathResult], file: pathlib.Path) -> None:
    """Grouped bars of p50/p90/p99 per path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = [r.path for r in results]
    fig, axes = pyplot.subplots(figsize=(max(6.0, 1.4 * len(names) + 2), 4.5))
    width = 0.26
    for i, q in enumerate(("p50", "p90", "p99")):
        values = [0.0 if math.isnan(r.latency[q]) else r.latency[q] for r in results]
        xs = [x + (i - 1) * width for x in range(len(names))]
        bars = axes.bar(xs, values, width, label=q)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.set_xticks(range(len(names)), names, rotation=20, ha="right")
    axes.set_ylabel("latency (ms)")
    rate = results[0].rate if results else 0
    axes.set_title(f"Latency per path at {rate:g} rps")
    axes.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    pyplot.close(fig)


def write_json(results: Sequence[PathResult], meta: Mapping[str, Any], file: pathlib.Path) -> None:
    doc = {"meta": dict(meta), "paths": [dataclasses.asdict(r) for r in results]}
    file.write_text(json.dumps(doc, indent=1, sort_keys=True))

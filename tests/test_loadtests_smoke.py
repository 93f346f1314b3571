"""The load-test harness in smoke mode, plus its pure parts.

The smoke run is the real thing at a tiny rate for a few seconds per path: the local world
(echo pods, HBONE terminators, a real Envoy waypoint), extauthz and the OPA test double as
processes, and locust headless in a subprocess. It proves the harness works end to end and
that every path answers the scenario mix as the policy says; it measures nothing.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from loadtests import envoyconf, extauthz_bench, harness, recorder, report, rig, scenarios
from tests import conftest
from waypoint.runtime import envoy_process


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("loadtest-smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=conftest.REPO,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


def test_smoke_writes_every_artifact(smoke: pathlib.Path) -> None:
    for path in ("direct", "waypoint", "waypoint-authz", "waypoint-opa"):
        assert (smoke / f"{path}_stats.csv").stat().st_size > 0
        assert "<html" in (smoke / f"{path}.html").read_text().lower()
        requests, _failures = report.locust_totals(smoke / path)
        assert requests > 0, path
    assert (smoke / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (smoke / "results.md").read_text()
    assert "| path | requests | rps | errors | p50 ms | p90 ms | p99 ms |" in table
    assert "official OPA image" in table


def test_smoke_allowed_path_has_no_errors_and_policy_decides(smoke: pathlib.Path) -> None:
    doc = json.loads((smoke / "results.json").read_text())
    paths = {p["path"]: p for p in doc["paths"]}
    assert list(paths) == ["direct", "waypoint", "waypoint-authz", "waypoint-opa"]
    for name, result in paths.items():
        allowed = result["by_name"][scenarios.ALLOWED]
        assert allowed["requests"] > 0, name
        assert allowed["failures"] == 0, (name, result["errors"])
    # With extauthz in the path a failure means a wrong status: 403 and 401 were seen where
    # the policy says, and the routes split by header and rewrote /api as the world says.
    for name in ("waypoint-authz", "waypoint-opa"):
        by_name = paths[name]["by_name"]
        for scenario in ("denied-policy", "invalid-token", "split-header-v2", "split-api-rewrite"):
            assert by_name[scenario]["requests"] > 0, (name, scenario)
            assert by_name[scenario]["failures"] == 0, (name, scenario, paths[name]["errors"])
    assert paths["waypoint"]["cpu_seconds"]["envoy"] >= 0


def test_extauthz_bench_says_how_to_install_a_missing_hey() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.extauthz_bench"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=conftest.REPO,
        env={**os.environ, "PATH": "/nonexistent"},
        check=False,
    )
    assert proc.returncode == 2
    assert "apt-get install -y hey" in proc.stderr


@pytest.mark.skipif(
    shutil.which("hey") is None, reason="hey is not installed (apt-get install hey)"
)
def test_extauthz_bench_runs_its_three_configs(tmp_path: pathlib.Path) -> None:
    # Phases of a few seconds: a 1 s phase on a loaded 2-core machine can end before the
    # first answer is counted (warm-up is excluded), which would test the machine, not the bench.
    argv = ["--rate", "50", "--duration", "2", "--sat-duration", "4", "--warmup", "0"]
    argv += ["--connections", "2", "--sat-connections", "2", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.extauthz_bench", *argv],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=conftest.REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = json.loads((tmp_path / "extauthz-bench.json").read_text())["table"]
    for mode in ("rate", "saturate"):
        for config in extauthz_bench.CONFIGS:
            row = table[mode][config]
            assert row["requests"] > 0, (mode, config)
            assert row["errors"] == 0, (mode, config)
            # lost comes from the front Envoy's own counter: on a healthy run it saw exactly
            # the requests hey recorded, warm-up included (saturation always drops its first
            # second, so there requests, which excludes it, may be fewer).
            assert row["envoy_requests"] == row["recorded"] >= row["requests"], (mode, config)
            assert row["lost"] == 0, (mode, config)
    markdown = (tmp_path / "extauthz-bench.md").read_text()
    assert "full-check throughput >= 0.8x the floor" in markdown
    assert "| rps at rate | errors | lost | max rps (saturated) |" in markdown


def _bench_phase(config: str, mode: str, recorded: int, received: int) -> extauthz_bench.Phase:
    """A phase where hey recorded ``recorded`` answers (one a 503) and Envoy saw ``received``."""
    cpu = {"envoy": 0.1, "floor": 0.1, "full": 0.1}
    statuses = {200: recorded - 1, 503: 1}
    return extauthz_bench.Phase(
        config, mode, [0.001] * recorded, statuses, 1.0, cpu, recorded, received
    )


def test_extauthz_bench_counts_requests_hey_left_out_as_lost() -> None:
    rate = _bench_phase("full", "rate", 100, 103)  # 3 reached Envoy and never came back to hey
    assert (rate.errors, rate.lost) == (1, 3)
    assert _bench_phase("full", "rate", 100, 100).lost == 0
    phases = [
        _bench_phase(config, mode, 100, received)
        for config in extauthz_bench.CONFIGS
        for mode, received in (("rate", 103), ("saturate", 102))
    ]
    table = {
        mode: {c: extauthz_bench.summarize(phases, c, mode) for c in extauthz_bench.CONFIGS}
        for mode in ("rate", "saturate")
    }
    assert (table["rate"]["full"]["lost"], table["rate"]["full"]["envoy_requests"]) == (3, 103)
    lines = extauthz_bench.markdown(table, extauthz_bench._parser().parse_args([])).splitlines()
    header = [
        cell.strip() for cell in next(x for x in lines if x.startswith("| config |")).split("|")
    ]
    full = [cell.strip() for cell in next(x for x in lines if x.startswith("| full |")).split("|")]
    assert full[header.index("errors")] == "2"  # one 503 in each mode
    assert full[header.index("lost")] == "5"  # 3 at the rate + 2 saturated


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert recorder.percentile(values, 50) == 50.0
    assert recorder.percentile(values, 99) == 99.0
    assert recorder.percentile(values, 100) == 100.0
    assert recorder.percentile([3.0], 99.9) == 3.0
    with pytest.raises(ValueError, match="outside"):
        recorder.percentile(values, 0)


def test_recorder_drops_warmup_and_counts_failures() -> None:
    now = [0.0]
    rec = recorder.Recorder(warmup_seconds=1.0, clock=lambda: now[0])
    rec.on_request("HBONE", "a", 9.0, 10)  # during warm-up
    now[0] = 1.5
    rec.on_request("HBONE", "a", 2.0, 10)
    now[0] = 2.5
    rec.on_request("HBONE", "b", 4.0, 10, exception=RuntimeError("status 500, expected 200"))
    summary = rec.summary()
    assert (summary["requests"], summary["failures"], summary["warmup_requests"]) == (2, 1, 1)
    assert summary["window_seconds"] == 1.0
    assert summary["by_name"]["b"]["failures"] == 1
    assert summary["errors"] == {"b: status 500, expected 200": 1}


def test_run_spec_round_trips_and_names_unknown_keys(tmp_path: pathlib.Path) -> None:
    spec = scenarios.RunSpec("waypoint", "HboneUser", "127.0.0.1:1", 10.0, "x.json", {"admin": "t"})
    assert scenarios.RunSpec.load(spec.dump(tmp_path / "spec.json")) == spec
    (tmp_path / "bad.json").write_text(
        json.dumps({**json.loads((tmp_path / "spec.json").read_text()), "rps": 1})
    )
    with pytest.raises(ValueError, match=r"unknown run spec keys \['rps'\]"):
        scenarios.RunSpec.load(tmp_path / "bad.json")


def test_scenario_tokens_and_expected_statuses() -> None:
    spec = scenarios.RunSpec("p", "DirectUser", "http://x", 1.0, "x", {"admin": "A"}, authz=True)
    denied = next(s for s in scenarios.MIX if s.name == "denied-policy")
    allowed = next(s for s in scenarios.MIX if s.name == scenarios.ALLOWED)
    assert scenarios.headers_for(spec, allowed) == [("authorization", "Bearer A")]
    assert scenarios.expected_status(spec, denied) == 403
    with pytest.raises(ValueError, match="no token 'viewer'"):
        scenarios.headers_for(spec, denied)
    picker = scenarios.Picker(seed=1)
    assert {picker.next().name for _ in range(500)} == {s.name for s in scenarios.MIX}


def test_baseline_envoy_config_is_valid(tmp_path: pathlib.Path) -> None:
    hops = [
        envoyconf.Hop("plain", 10001, upstream=("127.0.0.1", 8080)),
        envoyconf.Hop("authz", 10002, authz=(("127.0.0.1", 9001), ("127.0.0.1", 9002))),
    ]
    doc = envoyconf.bootstrap(hops, 10000)
    assert [c["name"] for c in doc["static_resources"]["clusters"]] == [
        "plain-upstream",
        "authz-authz",
    ]
    file = tmp_path / "envoy.json"
    file.write_text(json.dumps(doc))
    envoy_process.validate(file)
    with pytest.raises(ValueError, match="unique"):
        envoyconf.bootstrap([hops[0], hops[0]], 10000)


def test_hey_csv_parsing_skips_warmup() -> None:
    text = (
        "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n"
        "0.0100,0,0,0,0,0,200,0.5\n"
        "0.0010,0,0,0,0,0,200,1.5\n"
        "0.0020,0,0,0,0,0,403,2.5\n"
    )
    latencies, statuses, span = extauthz_bench.parse_hey_csv(text, warmup=1.0)
    assert (latencies, statuses, span) == ([0.001, 0.002], {200: 1, 403: 1}, 1.0)


def test_goals_need_their_paths() -> None:
    def result(
        path: str, p99: float, envoy_cpu: float = 0.0, requests: int = 20_000
    ) -> report.PathResult:
        latency = {"p50": p99 / 2, "p90": p99, "p99": p99}
        cpu = {"envoy": envoy_cpu * requests / 1000}  # envoy_cpu: seconds per 1,000 requests
        return report.PathResult(
            path, path, 1000, 10, requests, 0, 1000.0, latency, {}, cpu, {}, {}
        )

    only = report.goals([result("waypoint", 2.0, envoy_cpu=0.2)])
    assert only[0][2] is None
    assert only[-1] == (
        "waypoint <= 0.25 vCPU per 1,000 rps",
        "0.200 vCPU",
        True,
    )
    full = report.goals(
        [result("direct", 1.0), result("l4", 1.2), result("envoy", 1.5), result("waypoint", 2.4)]
    )
    assert full[0][2] is False  # the waypoint adds 1.2 ms, the plain hop 0.5 ms
    assert full[1] == ("waypoint hop adds <= 0.5 ms p99 (Istio)", "+1.20 ms", False)
    # 100 rps for 10 s: about 1,000 samples, too few for a p99 verdict; the reason is printed.
    short = report.goals(
        [
            result("direct", 1.0, requests=1000),
            result("l4", 1.2, requests=1000),
            result("envoy", 1.5, requests=1000),
            result("waypoint", 2.4, envoy_cpu=0.2, requests=1000),
        ]
    )
    assert [met for _, _, met in short[:2]] == [None, None]
    assert "no verdict: 1,000 samples" in short[0][1]
    assert short[-1][2] is True  # CPU per 1,000 requests needs no tail
    assert set(rig.PATHS) >= {"direct", "l4", "envoy", "waypoint", "waypoint-authz", "waypoint-opa"}


def test_harness_settings_modes_and_bad_paths(tmp_path: pathlib.Path) -> None:
    smoke = harness.settings(["--smoke", "--out", str(tmp_path)])
    assert (smoke.paths, smoke.rate, smoke.out) == (harness.SMOKE_PATHS, 20.0, tmp_path)
    soak = harness.settings(["--soak", "--duration", "30"])
    assert (soak.paths, soak.rate, soak.duration, soak.soak) == (
        ("waypoint-authz",),
        500.0,
        30.0,
        True,
    )
    assert harness.settings(["--paths", "direct, waypoint"]).paths == ("direct", "waypoint")
    with pytest.raises(SystemExit, match=r"unknown path\(s\) \['nope'\]"):
        harness.settings(["--paths", "direct,nope"])
    with pytest.raises(SystemExit, match="must be > 0"):
        harness.settings(["--rate", "0"])

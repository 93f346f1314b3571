"""The hop benchmark (``python -m loadtests.hop_bench``): configs, world, verdicts, a tiny run.

The tiny run starts the five real Envoys (backend, plain proxy, the two ztunnel stand-ins and
our rendered waypoint), drives every path with hey at 50 rps for 2 s, and checks the
outcome, not the speed: every request answered 200, tunnels only on the HBONE paths, and
the waypoint's own L7 counter covering every request of the waypoint path (and none of the
others). It is skipped only when hey is not installed.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import pytest

from loadtests import extauthz_bench, hop_bench, hop_envoys, hop_rig, procs
from waypoint import pipeline
from waypoint.envoy import options as options_mod
from waypoint.runtime import envoy_process, inputs


def test_every_generated_config_passes_envoy_validate(tmp_path: pathlib.Path) -> None:
    rig = hop_rig.HopRig(tmp_path, log=lambda _line: None)
    configs = rig.write()
    assert list(configs) == list(hop_rig.ROLES)
    for path in configs.values():
        envoy_process.validate(path)
    assert rig.waypoint_id == "spiffe://cluster.local/ns/hop/sa/waypoint"
    assert rig.ids["pod"] == "spiffe://cluster.local/ns/hop/sa/backend"


def test_world_moves_the_pod_and_the_waypoint_follows() -> None:
    objects = hop_rig.load_world("127.0.30.77")
    assert hop_rig.world_pod_address(objects) == "127.0.30.77"
    rendered = pipeline.render(
        objects, hop_rig.NAMESPACE, hop_rig.WAYPOINT, options_mod.BootstrapOptions()
    )
    assert not [s for s in rendered.translation.statuses if not s.ok]
    endpoints = [
        (e.address, e.port, e.hbone) for c in rendered.waypoint.clusters for e in c.endpoints
    ]
    assert endpoints == [("127.0.30.77", hop_rig.POD_PORT, True)]
    # The file itself is untouched: the move is on a copy.
    assert hop_rig.world_pod_address(inputs.load_objects([hop_rig.WORLD])) == "127.0.30.1"


def test_stand_ins_reject_empty_or_duplicate_input(tmp_path: pathlib.Path) -> None:
    certs = hop_envoys.CertFiles(tmp_path)
    with pytest.raises(ValueError, match="at least one tunnel"):
        hop_envoys.client_ztunnel([], certs, 1)
    tunnel = hop_envoys.Tunnel(
        "t", ("127.0.0.1", 1), ("127.0.0.1", 2), "10.0.0.1:80", "spiffe://x/y"
    )
    with pytest.raises(ValueError, match="tunnel names must be unique"):
        hop_envoys.client_ztunnel([tunnel, tunnel], certs, 1)
    with pytest.raises(ValueError, match="at least one destination"):
        hop_envoys.server_ztunnel(("127.0.0.1", 1), certs, "cluster.local", {}, 2)


def test_verdicts() -> None:
    met = hop_bench.verdicts(hop_bench.Added(plain=0.4, waypoint=0.3))
    assert [v[2] for v in met] == ["yes", "yes"]
    missed = hop_bench.verdicts(hop_bench.Added(plain=0.2, waypoint=0.6))
    assert [v[2] for v in missed] == ["NO", "NO"]
    assert "3.00x" in missed[0][1]
    undefined = hop_bench.Added(plain=0.0, waypoint=0.1)
    assert math.isnan(undefined.ratio)
    assert [v[2] for v in hop_bench.verdicts(undefined)] == ["n/a", "yes"]
    # A negative waypoint hop is noise in the l4 baseline: neither goal can be judged.
    noise = hop_bench.verdicts(hop_bench.Added(plain=1.0, waypoint=-0.4))
    assert [v[2] for v in noise] == ["n/a", "n/a"]
    assert "below the noise" in noise[0][1]


def test_no_verdict_on_too_few_samples() -> None:
    missed = hop_bench.verdicts(hop_bench.Added(plain=0.2, waypoint=0.6))
    assert hop_bench.gated(missed, 20_000) == missed
    withheld = hop_bench.gated(missed, 1_000)
    assert [v[2] for v in withheld] == ["n/a", "n/a"]
    assert all("a p99 needs at least 10,000" in v[1] for v in withheld)


def test_verdicts_show_rounds_and_flag_disagreement() -> None:
    rounds = [hop_bench.Added(0.4, 0.3), hop_bench.Added(0.2, 0.9)]
    pooled = hop_bench.Added(0.4, 0.4)
    (ratio, budget) = hop_bench.verdicts(pooled, rounds)
    assert ratio[2] == "yes"
    assert "per round 0.75x, 4.50x; rounds disagree" in ratio[1]
    assert budget[2] == "yes"
    assert "per round +0.300 ms, +0.900 ms; rounds disagree" in budget[1]


def test_phase_problems_catch_lost_and_misrouted_requests() -> None:
    counts = {"backend_2xx": 100, "waypoint_2xx": 100, "waypoint_tunnels": 1, "pod_tunnels": 1}
    good = hop_bench.Phase("waypoint", 1, [0.001], {200: 100}, 1.0, 100, {}, counts)
    assert good.problems(expected=100) == []
    lost = hop_bench.Phase("waypoint", 1, [0.001], {200: 10}, 1.0, 10, {}, counts)
    assert lost.problems(expected=100) == ["waypoint round 1: only 10 of ~100 requests answered"]
    bypassed = hop_bench.Phase("waypoint", 2, [0.001], {200: 100, 503: 1}, 1.0, 101, {}, counts)
    assert bypassed.problems(expected=100) == [
        "waypoint round 2: 1 non-200 answers",
        "waypoint round 2: the backend answered 100 of 101",
        "waypoint round 2: only 100 of 101 requests crossed the waypoint",
    ]
    stray = hop_bench.Phase("l4", 1, [0.001], {200: 100}, 1.0, 100, {}, counts)
    assert stray.problems(expected=100) == [
        "l4 round 1: 100 requests crossed the waypoint on the l4 path"
    ]


def test_probe_of_a_dead_path_is_not_ok() -> None:
    port = procs.free_port()
    dead = hop_rig.probe("direct", f"http://127.0.0.1:{port}{hop_rig.PATH}")
    assert dead.status == 0
    assert not dead.ok
    assert dead.detail
    assert not hop_rig.Probe("envoy", 200, crossed_waypoint=True).ok
    assert not hop_rig.Probe("waypoint", 200, crossed_waypoint=False).ok
    assert hop_rig.Probe("waypoint", 200, crossed_waypoint=True).ok


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert hop_bench.main(["--duration", "2", "--warmup", "3"]) == 2
    assert "--warmup" in capsys.readouterr().err


def test_missing_hey_exits_2_with_the_install_hint(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no hey on PATH
    assert hop_bench.main(["--out", str(tmp_path / "out")]) == 2
    assert extauthz_bench.INSTALL_HINT in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("hey") is None, reason=extauthz_bench.INSTALL_HINT)
def test_tiny_run_answers_every_path_through_the_right_hops(tmp_path: pathlib.Path) -> None:
    argv = ["--rate", "50", "--duration", "2", "--warmup", "0.5", "--rounds", "1"]
    assert hop_bench.main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "hop-bench.json").read_text())
    assert report["problems"] == []
    assert [p["path"] for p in report["probes"]] == list(hop_bench.PATHS)
    assert all(p["ok"] and p["status"] == 200 for p in report["probes"])
    assert [p["crossed_waypoint"] for p in report["probes"]] == [False, False, False, True]
    phases = {p["path"]: p for p in report["phases"]}
    assert list(phases) == list(hop_bench.PATHS)
    for path, phase in phases.items():
        assert phase["errors"] == 0, path
        assert phase["statuses"] == {"200": phase["requests"]}, path
        assert phase["requests"] > 0, path
        assert phase["sent"] >= phase["requests"], path
        # Every request hey saw answered reached the native backend, on every path.
        assert phase["backend_2xx"] >= phase["sent"], path
    # Only the waypoint path reaches the waypoint's L7 listener, and all of it does.
    assert phases["waypoint"]["waypoint_2xx"] >= phases["waypoint"]["sent"]
    assert [phases[p]["waypoint_2xx"] for p in ("direct", "envoy", "l4")] == [0, 0, 0]
    # hey opens fresh connections each phase, each one a tunnel from the client side: to the
    # pod on the l4 path, to the waypoint on the waypoint path (whose own upstream tunnels
    # to the pod were opened by the probe and may be reused).
    assert phases["l4"]["pod_tunnels"] > 0
    assert phases["l4"]["waypoint_tunnels"] == 0
    assert phases["waypoint"]["waypoint_tunnels"] > 0
    for path in ("direct", "envoy"):
        assert phases[path]["pod_tunnels"] == phases[path]["waypoint_tunnels"] == 0, path
    assert report["waypoint_rss_bytes"] > 0
    assert report["table"]["waypoint"]["cpu_hop_per_1k"] is not None
    markdown = (tmp_path / "hop-bench.md").read_text()
    assert "| waypoint |" in markdown
    assert "(a) waypoint hop adds" in markdown
    for role in hop_rig.ROLES:
        envoy_process.validate(tmp_path / "rig" / f"{role}-envoy.yaml")

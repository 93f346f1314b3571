"""The controller benchmark, run tiny: it works end to end and counts what it should.

It measures nothing here (the figures are in docs/controller.md, from full-size runs)."""

from __future__ import annotations

from loadtests import controller_bench


def test_bench_runs_tiny_and_one_service_reaches_one_namespace() -> None:
    args = controller_bench.parse_args(
        [
            *("--namespaces", "3", "--services", "1", "--resync", "3600", "--steady", "0"),
            *("--quiet", "1.5", "--limit", "120"),
        ]
    )
    result = controller_bench.run(args)
    assert result["cold_convergence_s"] is not None, result
    added = result["add_service"]
    assert added["gateway_namespaces_read"] == [added["namespace"]]
    assert set(added["by_method"]) <= {"GET", "PATCH", "PUT", "WATCH"}
    assert "\n" in controller_bench.report(result)

"""The native-authorization benchmark (``python -m loadtests.authz_policy_bench``), tiny run.

Checks the outcome, not the speed: the world translates cleanly (RequestAuthentication, the
10-rule AuthorizationPolicy, the ExtAuthzPolicy), every generated config passes envoy
validate, and a 50 rps run of 1 s per variant answers every request with 200 through all
three paths (so the token, the RBAC rules and the Rego rule really allow this client). It is
skipped only when hey is not installed.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from loadtests import authz_policy_bench as bench
from waypoint.runtime import envoy_process


def test_the_rig_renders_and_validates(tmp_path: pathlib.Path) -> None:
    rig = bench.PolicyRig(tmp_path, bench.mint_token())
    for path in rig.write().values():
        envoy_process.validate(path)
    assert rig.rendered is not None
    by_name = {d.name: d for d in rig.rendered.waypoint.destinations}
    native = by_name["backend-native"]
    assert len(native.authorization) == 1
    assert len(native.authorization[0].rules) == bench.RULES
    assert native.jwt_providers
    assert not by_name["backend"].authorization
    assert not by_name["backend-extauthz"].jwt_providers


@pytest.mark.skipif(shutil.which("hey") is None, reason="hey is not installed")
def test_a_tiny_run_answers_200_everywhere(tmp_path: pathlib.Path) -> None:
    argv = ["--rate", "50", "--duration", "1", "--warmup", "0.2", "--rounds", "1"]
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "authz-policy.json").read_text())
    for variant in bench.VARIANTS:
        row = report["table"][variant]
        assert row["requests"] > 0, variant
        assert row["non_200"] == 0, variant
    assert report["table"]["extauthz"]["cpu_extauthz_per_1k"] > 0

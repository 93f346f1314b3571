"""``waypoint apply/generate`` in an Istio ambient mesh: istioctl's warning for a namespace
outside ambient mode, and ``--require-waypoint``'s fail-closed AuthorizationPolicies."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from tests.fakekube import server
from tests.test_cli_cluster import Run
from waypoint import cli
from waypoint.controller import apiclient
from waypoint.kube import failclosed

SECURITY = "security.istio.io/v1"
WARNING = "warning: namespace demo is not enrolled in ambient mode"


@pytest.fixture
def run(fake: server.FakeKube, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> Run:
    kubeconfig = str(fake.write_kubeconfig(tmp_path / "kubeconfig"))

    def invoke(*argv: str, connect: bool = True) -> tuple[int, str, str]:
        extra = ["--kubeconfig", kubeconfig] if connect else []
        code = cli.main([*argv, *extra])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def test_apply_warns_when_the_namespace_is_not_ambient(run: Run) -> None:
    code, out, err = run("apply", "-n", "demo")
    assert code == 0
    assert out == "waypoint demo/waypoint applied\n"
    assert WARNING in err
    assert "kubectl label namespace demo istio.io/dataplane-mode=ambient" in err


def _ambient(api: apiclient.Cluster) -> None:
    labels = {"istio.io/dataplane-mode": "ambient"}
    api.merge_patch(apiclient.NAMESPACE, "", "demo", {"metadata": {"labels": labels}})


def test_apply_is_quiet_in_an_ambient_namespace(run: Run, api: apiclient.Cluster) -> None:
    _ambient(api)
    code, _, err = run("apply", "-n", "demo")
    assert (code, err) == (0, "")


def _policies(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "AuthorizationPolicy"}


def test_generate_require_waypoint_prints_istios_policy(run: Run) -> None:
    code, out, _ = run(
        "generate",
        "-n",
        "bookinfo",
        "--require-waypoint",
        "--trust-domain",
        "corp.example",
        connect=False,
    )
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Gateway", "AuthorizationPolicy", "AuthorizationPolicy"]
    found = _policies(docs)
    require = found["waypoint" + failclosed.REQUIRE_SUFFIX]
    assert require["apiVersion"] == SECURITY
    assert require["spec"] == {
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["corp.example/ns/bookinfo/sa/waypoint"]}}]}],
    }
    assert "selector" not in require["spec"]  # the whole namespace
    inbound = found["waypoint" + failclosed.WAYPOINT_INBOUND_SUFFIX]["spec"]
    assert inbound["selector"] == {
        "matchLabels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    }
    assert inbound["rules"] == [{}]
    code, out, _ = run(
        "generate", "-n", "bookinfo", "--require-waypoint", "-o", "json", connect=False
    )
    assert [i["kind"] for i in json.loads(out)["items"]][1:] == ["AuthorizationPolicy"] * 2


def test_require_waypoint_refuses_waypoints_it_would_not_fit(run: Run) -> None:
    code, _, err = run(
        "generate", "--require-waypoint", "--service-account", "reviews", connect=False
    )
    assert code == 1
    assert "namespace-wide" in err
    code, _, err = run("generate", "--require-waypoint", "--for", "none", connect=False)
    assert code == 1
    assert "--for none" in err


def test_apply_require_waypoint_applies_the_policies(
    run: Run, fake: server.FakeKube, api: apiclient.Cluster
) -> None:
    _ambient(api)
    code, out, err = run("apply", "-n", "demo", "--enroll-namespace", "--require-waypoint")
    assert code == 0, err
    assert "AuthorizationPolicy demo/waypoint-require-waypoint applied" in out
    assert "--require-waypoint without --wait" in err
    require = fake.get(SECURITY, "AuthorizationPolicy", "demo", "waypoint-require-waypoint")
    assert require is not None
    principals = require["spec"]["rules"][0]["from"][0]["source"]["principals"]
    assert principals == ["cluster.local/ns/demo/sa/waypoint"]
    assert fake.get(SECURITY, "AuthorizationPolicy", "demo", "waypoint-waypoint-inbound")


def test_apply_require_waypoint_waits_before_the_policy(run: Run, fake: server.FakeKube) -> None:
    # Never Programmed (no controller runs here): the policy must not be applied.
    code, _, err = run("apply", "-n", "demo", "--require-waypoint", "--wait", "--timeout", "1s")
    assert code == 1
    assert "not Programmed" in err
    assert fake.get(SECURITY, "AuthorizationPolicy", "demo", "waypoint-require-waypoint") is None


def test_apply_require_waypoint_needs_istios_crds(
    run: Run, fake: server.FakeKube, monkeypatch: Any
) -> None:
    real = apiclient.Cluster.resource

    def without_istio(self: apiclient.Cluster, kind: apiclient.Kind) -> Any:
        if kind == apiclient.AUTHORIZATION_POLICY:
            raise apiclient.MissingKind("the cluster does not serve AuthorizationPolicy")
        return real(self, kind)

    monkeypatch.setattr(apiclient.Cluster, "resource", without_istio)
    code, _, err = run("apply", "-n", "demo", "--require-waypoint")
    assert code == 1
    assert "AuthorizationPolicy" in err
    assert fake.get("gateway.networking.k8s.io/v1", "Gateway", "demo", "waypoint") is None

"""``render_kubernetes``: offline, the objects the controller would apply, with the real
pipeline's Envoy bootstrap inside the ConfigMap."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from tests.fakekube import world
from waypoint import pipeline
from waypoint.envoy import options as envoy_options
from waypoint.kube import gateway, render

OPTIONS = envoy_options.BootstrapOptions()


def _inputs() -> list[dict[str, object]]:
    return [*world.mesh("demo"), gateway.generate_gateway("demo")]


def test_render_kubernetes_matches_the_pipeline() -> None:
    objs = render.render_kubernetes(_inputs(), OPTIONS)
    kinds = [obj["kind"] for obj in objs]
    assert kinds == [
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
    ]
    config_map = objs[1]
    expected = pipeline.render(
        _inputs(), "demo", "waypoint", render.waypoint_options(OPTIONS, "demo", "waypoint")
    ).bootstrap_yaml
    assert config_map["data"]["envoy.yaml"] == expected
    assert yaml.safe_load(expected)["node"]["id"] == "waypoint~demo~waypoint"
    # Offline input has no UIDs, so no ownerReferences (they would be invalid without one).
    assert all("ownerReferences" not in obj["metadata"] for obj in objs)
    for obj in objs:
        kubernetes_validate.validate(obj, "1.32.0", strict=True)


def test_render_kubernetes_is_deterministic_and_sorted() -> None:
    inputs = [*_inputs(), *world.mesh("other"), gateway.generate_gateway("other", "east")]
    first = render.render_kubernetes(inputs, OPTIONS)
    assert first == render.render_kubernetes(list(reversed(inputs)), OPTIONS)
    owners = [
        (
            o["metadata"]["namespace"],
            o["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        )
        for o in first
    ]
    assert owners == sorted(owners)


def test_render_kubernetes_errors_name_the_gateway() -> None:
    gw = gateway.generate_gateway("demo")
    gw["spec"]["infrastructure"] = {
        "parametersRef": {"group": "", "kind": "ConfigMap", "name": "missing"}
    }
    with pytest.raises(
        ValueError, match="Gateway demo/waypoint: parametersRef ConfigMap demo/missing"
    ):
        render.render_kubernetes([*world.mesh("demo"), gw], OPTIONS)


def _authz_policy() -> dict[str, object]:
    return {
        "apiVersion": "policy.waypoint.dev/v1alpha1",
        "kind": "ExtAuthzPolicy",
        "metadata": {"name": "echo-authz", "namespace": "demo"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
            "decision": "envoy/authz/allow",
        },
    }


def test_render_kubernetes_with_an_authz_policy_adds_the_sidecar() -> None:
    rego = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "waypoint-extauthz-policy", "namespace": "demo"},
        "data": {"authz.rego": "package envoy.authz\n\ndefault allow := true\n"},
    }
    objs = render.render_kubernetes([*_inputs(), _authz_policy(), rego], OPTIONS)
    assert [(o["kind"], o["metadata"]["name"]) for o in objs][:3] == [
        ("ServiceAccount", "waypoint"),
        ("ConfigMap", "waypoint-envoy-config"),
        ("ConfigMap", "waypoint-extauthz"),
    ]
    config = yaml.safe_load(objs[2]["data"]["config.yaml"])
    assert config["policy"]["modules"] == ["/etc/extauthz-policies/authz.rego"]
    for obj in objs:
        kubernetes_validate.validate(obj, "1.32.0", strict=True)


def test_render_kubernetes_names_the_missing_rego_config_map() -> None:
    with pytest.raises(ValueError, match="ConfigMap demo/waypoint-extauthz-policy"):
        render.render_kubernetes([*_inputs(), _authz_policy()], OPTIONS)

"""Everything under manifests/, built with kustomize, validates: built-in kinds against the
Kubernetes 1.32 schemas (kubernetes-validate), Gateway API kinds against the transcribed CRD
schema, and the overlays' class-wide defaults produce valid waypoint Deployments.

kustomize comes from ``kubectl kustomize``; with no kubectl on the machine these tests skip
(no PyPI package ships the real kustomize for Python 3.11)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests import conftest
from tests.fakekube import gateway_api_schema
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, gateway, objects, settings

MANIFESTS = conftest.REPO / "manifests"
TARGETS = ["base", "overlays/opa", "overlays/cert-manager"]
# cert-manager's kinds have no schema in kubernetes-validate and we do not carry their CRDs.
UNCHECKED = {"Certificate", "ClusterIssuer"}


def build(target: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    proc = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS / target)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.mark.parametrize("target", TARGETS)
def test_manifests_validate(target: str) -> None:
    docs = build(target)
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Namespace",
        "GatewayClass",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "Role",
    } <= kinds
    for doc in docs:
        where = f"{target}: {doc['kind']} {doc['metadata'].get('name')}"
        if doc["kind"] in gateway_api_schema.SCHEMAS:
            jsonschema.validate(doc, gateway_api_schema.SCHEMAS[doc["kind"]])
        elif doc["kind"] not in UNCHECKED:
            try:
                kubernetes_validate.validate(doc, "1.32.0", strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc}")
        if doc["kind"] == "GatewayClass":
            assert "namespace" not in doc["metadata"]
            assert doc["spec"]["controllerName"] == constants.CONTROLLER_NAME


def _images(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [image for value in node.values() for image in _images(value)]
    if isinstance(node, list):
        return [image for value in node for image in _images(value)]
    if isinstance(node, str) and "image:" in node:
        return _images(yaml.safe_load(node))  # images inside class-defaults overlays
    return []


def test_images_name_no_registry_host() -> None:
    for target in TARGETS:
        images = [image for doc in build(target) for image in _images(doc)]
        assert images
        for image in images:
            first, sep, _ = image.partition("/")
            # A registry host is a first path component with a dot or a port (or localhost).
            assert not sep or ("." not in first and ":" not in first and first != "localhost"), (
                image
            )


def test_rbac_is_least_privilege() -> None:
    docs = build("base")
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "update" not in rule["verbs"] or all(
            r.endswith("/status") for r in rule["resources"]
        )
    deletable = {
        r for rule in role["rules"] if "delete" in rule["verbs"] for r in rule["resources"]
    }
    assert deletable == {"horizontalpodautoscalers", "poddisruptionbudgets"}
    (lease_role,) = [d for d in docs if d["kind"] == "Role"]
    assert {r for rule in lease_role["rules"] for r in rule["resources"]} == {"leases"}


@pytest.mark.parametrize("overlay", ["overlays/opa", "overlays/cert-manager"])
def test_overlay_class_defaults_make_valid_waypoints(overlay: str) -> None:
    docs = build(overlay)
    (gateway_class,) = [d for d in docs if d["kind"] == "GatewayClass"]
    ref = settings.class_parameters_ref(gateway_class)
    assert ref is not None
    (defaults,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and (d["metadata"]["namespace"], d["metadata"]["name"]) == ref
    ]
    gw = gateway.generate_gateway("demo")
    jsonschema.validate(gw, gateway_api_schema.GATEWAY)
    conf = settings.resolve(gw, None, None, defaults)
    generated = objects.desired_objects(
        gw, conf, "rendered: config\n", envoy_options.BootstrapOptions()
    )
    for obj in generated:
        kubernetes_validate.validate(obj, "1.32.0", strict=True)
    (deployment,) = [o for o in generated if o["kind"] == "Deployment"]
    containers = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert containers[:2] == ["envoy", "extauthz"]
    if overlay == "overlays/opa":
        assert containers[2:] == ["opa"]
    else:
        assert conf.cert_source is settings.CertSource.CSI


def test_gateway_api_schema_catches_mistakes() -> None:
    for gw in (
        gateway.generate_gateway("demo"),
        gateway.generate_gateway("demo", "east", "all", "reviews", 2, 4),
    ):
        jsonschema.validate(gw, gateway_api_schema.GATEWAY)
    bad = gateway.generate_gateway("demo")
    bad["spec"]["listeners"][0]["port"] = 70000
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, gateway_api_schema.GATEWAY)
    long_description = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "waypoint"},
        "spec": {"controllerName": constants.CONTROLLER_NAME, "description": "x" * 65},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(long_description, gateway_api_schema.GATEWAY_CLASS)

"""Everything under manifests/, built with kustomize, validates: built-in kinds against the
Kubernetes 1.32 schemas (kubernetes-validate), Gateway API kinds against the transcribed CRD
schema, and the overlays' class-wide defaults produce valid waypoint Deployments.

kustomize comes from ``kubectl kustomize`` (no PyPI package ships the real kustomize for
Python 3.11); without kubectl these tests fail (.ci/run installs it)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate
import pytest
import yaml

from tests import conftest
from tests.fakekube import catalog as fake_catalog
from tests.fakekube import gateway_api_schema, world
from waypoint import cli, version
from waypoint.controller import apiclient, reconcile, xds
from waypoint.controller import main as controller_main
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, gateway, objects, render, settings

MANIFESTS = conftest.REPO / "manifests"
# The base and every overlay there is, so a new overlay cannot go unbuilt.
TARGETS = [
    "base",
    *sorted(f"overlays/{d.name}" for d in (MANIFESTS / "overlays").iterdir() if d.is_dir()),
]
# cert-manager's kinds have no schema in kubernetes-validate and we do not carry their CRDs.
UNCHECKED = {"Certificate", "ClusterIssuer"}


def build(target: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl (with its built-in kustomize) is not installed: apt-get install kubectl"
        )
    path = pathlib.Path(target) if pathlib.Path(target).is_absolute() else MANIFESTS / target
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False
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


def test_xds_overlay_serves_ads_behind_the_default_address() -> None:
    docs = build("overlays/xds")
    (service,) = [d for d in docs if d["metadata"]["name"] == xds.SERVICE_NAME]
    (port,) = service["spec"]["ports"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert f"--xds-listen=0.0.0.0:{port['targetPort']}" in container["args"]
    assert port["targetPort"] in [p["containerPort"] for p in container["ports"]]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # What the controller tells the pods to dial by default names this Service.
    namespace = service["metadata"]["namespace"]
    assert xds.default_address(namespace, port["port"]) == (
        f"{service['metadata']['name']}.{namespace}.svc:{port['port']}"
    )


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


def test_one_image_entry_names_the_controller_and_its_waypoints(tmp_path: pathlib.Path) -> None:
    """``kustomize edit set image waypoint-mesh=…`` (here: an overlay's ``images:``) reaches the
    controller's container and the image it puts into waypoint Deployments."""
    base = os.path.relpath(MANIFESTS / "base", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [base],
                "images": [
                    {"name": "waypoint-mesh", "newName": "mirror/waypoint-mesh", "newTag": "9.9.9"}
                ],
            }
        )
    )
    for docs in (build(str(tmp_path)), build("base")):
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["WAYPOINT_IMAGE"] == container["image"]
        assert "--image=$(WAYPOINT_IMAGE)" in container["args"]
        assert container["image"] in ("mirror/waypoint-mesh:9.9.9", "waypoint-mesh:0.1.0")
    # The controller puts its --image into every container it generates.
    args = cli.build_parser().parse_args(["controller", "--image=mirror/waypoint-mesh:9.9.9"])
    defaults = controller_main.defaults(args)
    assert defaults.envoy_image == defaults.extauthz_image == "mirror/waypoint-mesh:9.9.9"
    args = cli.build_parser().parse_args(["controller", "--extauthz-image=other:1"])
    defaults = controller_main.defaults(args)
    assert (defaults.envoy_image, defaults.extauthz_image) == (version.default_image(), "other:1")


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
    # Deployments: recreated when an immutable field (spec.selector) of ours must change.
    assert deletable == {
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
        "configmaps",
        "deployments",
    }
    (lease_role,) = [d for d in docs if d["kind"] == "Role"]
    assert {r for rule in lease_role["rules"] for r in rule["resources"]} == {"leases"}


def _allowed(role: dict[str, Any], group: str, resource: str) -> set[str]:
    return {
        verb
        for rule in role["rules"]
        if group in rule["apiGroups"] and resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_covers_what_the_controller_reads_and_writes() -> None:
    (role,) = [d for d in build("base") if d["kind"] == "ClusterRole"]
    plural = {(r.group, r.kind): r.plural for r in fake_catalog.all_resources()}
    for kind in (*reconcile.WORLD_KINDS, apiclient.GATEWAY_CLASS):
        resource = plural[(kind.group, kind.kind)]
        assert {"get", "list", "watch"} <= _allowed(role, kind.group, resource), kind
    for kind in reconcile.STATUS_KINDS.values():
        resource = plural[(kind.group, kind.kind)] + "/status"
        assert "update" in _allowed(role, kind.group, resource), kind
    # Policies are the user's: the controller only reads them and writes their status.
    for kind in apiclient.POLICY_KINDS:
        assert _allowed(role, kind.group, plural[(kind.group, kind.kind)]) == {
            "get",
            "list",
            "watch",
        }
    for kind in apiclient.GENERATED_KINDS:
        assert {"create", "patch"} <= _allowed(role, kind.group, plural[(kind.group, kind.kind)])


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
    # No policy needs extauthz here, so no sidecar: only the overlay's container joins Envoy.
    assert containers[0] == "envoy"
    if overlay == "overlays/opa":
        assert containers[1:] == ["opa"]
    else:
        assert conf.cert_source is settings.CertSource.CSI

    # With an ExtAuthzPolicy the sidecar joins; under the OPA overlay it asks that OPA.
    policy = {
        "apiVersion": "policy.waypoint.dev/v1alpha1",
        "kind": "ExtAuthzPolicy",
        "metadata": {"name": "echo-authz", "namespace": "demo"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
            "decision": "envoy/authz/allow",
        },
    }
    rego = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "waypoint-extauthz-policy", "namespace": "demo"},
        "data": {"policy.rego": "package envoy.authz\n\ndefault allow := true\n"},
    }
    inputs = [*world.mesh("demo"), gw, gateway_class, defaults, policy]
    if overlay != "overlays/opa":
        inputs.append(rego)
    generated = render.render_kubernetes(inputs, envoy_options.BootstrapOptions())
    for obj in generated:
        kubernetes_validate.validate(obj, "1.32.0", strict=True)
    (deployment,) = [o for o in generated if o["kind"] == "Deployment"]
    containers = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    (sidecar_config,) = [
        yaml.safe_load(o["data"]["config.yaml"])
        for o in generated
        if o["metadata"]["name"] == "waypoint-extauthz"
    ]
    if overlay == "overlays/opa":
        assert containers == ["envoy", "extauthz", "opa"]
        assert sidecar_config["policy"] == {
            "engine": "opa",
            "opa": {"url": "http://127.0.0.1:8181"},
        }
    else:
        assert containers == ["envoy", "extauthz"]
        assert sidecar_config["policy"]["engine"] == "embedded"


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

"""The objects of a waypoint behind Istio's ztunnel sandwich: the PROXY port on the Service and
the container, no certificate anywhere in the pod, the pod enrolled in ambient mode; rendered
offline from the real pipeline, and valid Kubernetes objects."""

from __future__ import annotations

import pathlib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests import test_kube_manifests
from tests.fakekube import server, world
from waypoint import cli, wellknown
from waypoint.controller import apiclient, reconcile
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, gateway, objects, render, settings
from waypoint.runtime import envoy_process

OPTIONS = envoy_options.BootstrapOptions()


def _sandwiched(annotation: str | None = "PROXY/15088") -> dict[str, Any]:
    gw = gateway.generate_gateway("demo")
    if annotation is not None:
        gw["metadata"]["annotations"] = {wellknown.INBOUND_BINDING_ANNOTATION: annotation}
    return gw


def _by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objs}


def _render(*extra: dict[str, Any], gw: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    inputs = [*world.mesh("demo"), gw or _sandwiched(), *extra]
    return _by_kind(render.render_kubernetes(inputs, OPTIONS))


def test_the_service_exposes_the_proxy_port() -> None:
    ports = _render()["Service"]["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in ports] == [
        ("mesh", 15008),
        ("proxy", 15088),
        ("status-port", 15021),
        ("http-envoy-prom", 15090),
    ]


def test_the_pod_holds_no_certificate_and_is_in_ambient_mode() -> None:
    objs = _render()
    template = objs["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"][wellknown.DATAPLANE_MODE_LABEL] == "ambient"
    pod = template["spec"]
    assert objects.CERT_VOLUME not in {v["name"] for v in pod["volumes"]}
    assert "sds" not in {v["name"] for v in pod["volumes"]}
    (envoy,) = pod["containers"]
    assert [p["containerPort"] for p in envoy["ports"]] == [15088, 15021, 15090]
    assert {m["name"] for m in envoy["volumeMounts"]} == {"config", "tmp"}
    assert list(objs["ConfigMap"]["data"]) == [constants.CONFIG_KEY]
    bootstrap = yaml.safe_load(objs["ConfigMap"]["data"][constants.CONFIG_KEY])
    listeners = [listener["name"] for listener in bootstrap["static_resources"]["listeners"]]
    assert "proxy_terminate" in listeners
    assert "connect_terminate" not in listeners


def test_the_gateway_class_annotation_is_enough() -> None:
    gateway_class = {
        "apiVersion": wellknown.GATEWAY_API_VERSION,
        "kind": "GatewayClass",
        "metadata": {
            "name": wellknown.GATEWAY_CLASS,
            "annotations": {wellknown.INBOUND_BINDING_ANNOTATION: "PROXY/15088"},
        },
        "spec": {"controllerName": constants.CONTROLLER_NAME},
    }
    ports = _render(gateway_class, gw=_sandwiched(None))["Service"]["spec"]["ports"]
    assert ("proxy", 15088) in [(p["name"], p["port"]) for p in ports]


def test_the_kgateway_listener_renders() -> None:
    gw = _sandwiched(None)
    gw["spec"]["listeners"] = [{"name": "proxy", "port": 15088, "protocol": "istio.io/PROXY"}]
    assert gateway.problems(gw) == []
    assert ("proxy", 15088) in [
        (p["name"], p["port"]) for p in _render(gw=gw)["Service"]["spec"]["ports"]
    ]


def test_an_hbone_waypoint_is_unchanged() -> None:
    objs = _render(gw=_sandwiched(None))
    template = objs["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"][wellknown.DATAPLANE_MODE_LABEL] == "none"
    assert objects.CERT_VOLUME in {v["name"] for v in template["spec"]["volumes"]}
    assert "proxy" not in {p["name"] for p in objs["Service"]["spec"]["ports"]}


def test_sandwiched_objects_validate_against_kubernetes_schemas() -> None:
    for obj in _render().values():
        kubernetes_validate.validate(obj, "1.32.0", strict=True)


# --- through the controller, against the fake API server ----------------------------------


def test_the_controller_reads_the_gateway_class_annotation(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    reconciler = reconcile.Reconciler(
        api, lambda: reconcile.list_world(api), clock=lambda: "2026-01-01T00:00:00Z"
    )
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    reconciler.reconcile_gateway("demo", "waypoint")
    service = fake.get("v1", "Service", "demo", "waypoint")
    assert service is not None
    assert "proxy" not in {p["name"] for p in service["spec"]["ports"]}

    annotations = {wellknown.INBOUND_BINDING_ANNOTATION: "PROXY/15088"}
    api.merge_patch(
        apiclient.GATEWAY_CLASS, "", "waypoint", {"metadata": {"annotations": annotations}}
    )
    reconciler.reconcile_gateway("demo", "waypoint")
    service = fake.get("v1", "Service", "demo", "waypoint")
    assert service is not None
    assert ("proxy", 15088) in [(p["name"], p["port"]) for p in service["spec"]["ports"]]
    deployment = fake.get("apps/v1", "Deployment", "demo", "waypoint")
    assert deployment is not None
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert objects.CERT_VOLUME not in {v["name"] for v in volumes}


# --- the Istio install overlay -------------------------------------------------------------


def test_the_istio_overlay_makes_sandwiched_waypoints() -> None:
    docs = test_kube_manifests.build("overlays/istio")
    (gateway_class,) = [d for d in docs if d["kind"] == "GatewayClass"]
    meta = gateway_class["metadata"]
    assert meta["annotations"][wellknown.INBOUND_BINDING_ANNOTATION] == "PROXY/15088"
    assert meta["labels"][wellknown.WAYPOINT_FOR] == "service"
    ref = settings.class_parameters_ref(gateway_class)
    (defaults,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and (d["metadata"]["namespace"], d["metadata"]["name"]) == ref
    ]
    inputs = [*world.mesh("demo"), gateway.generate_gateway("demo"), gateway_class, defaults]
    generated = _by_kind(render.render_kubernetes(inputs, OPTIONS))
    ports = generated["Service"]["spec"]["ports"]
    assert ("proxy", 15088) in [(p["name"], p["port"]) for p in ports]
    template = generated["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"][wellknown.DATAPLANE_MODE_LABEL] == "ambient"
    for obj in generated.values():
        kubernetes_validate.validate(obj, "1.32.0", strict=True)


# --- waypoint render ------------------------------------------------------------------------


def test_render_of_a_sandwiched_waypoint_writes_no_sds_files(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world_file = tmp_path / "world.yaml"
    world_file.write_text(yaml.safe_dump_all([*world.mesh("demo"), _sandwiched()]))
    out_file = tmp_path / "out" / "envoy.yaml"
    out_file.parent.mkdir()
    argv = ["render", "-f", str(world_file), "-o", str(out_file)]
    assert cli.main([*argv, "--cert-dir", str(tmp_path / "certs")]) == 0
    assert sorted(p.name for p in out_file.parent.iterdir()) == ["envoy.yaml"]
    assert not (tmp_path / "certs-sds").exists()
    assert "SDS" not in capsys.readouterr().err
    envoy_process.validate(out_file)

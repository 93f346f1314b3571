"""End to end reconciles against the fake API server through the real client: apply, status,
the right update on a change, zero writes when nothing changed, foreign objects left alone."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.fakekube import server, world
from waypoint import version
from waypoint.controller import apiclient, reconcile
from waypoint.kube import gateway

GW = ("gateway.networking.k8s.io/v1", "Gateway", "demo", "waypoint")


@pytest.fixture
def reconciler(api: apiclient.Cluster) -> reconcile.Reconciler:
    return reconcile.Reconciler(
        api, lambda: reconcile.list_world(api), clock=lambda: "2026-01-01T00:00:00Z"
    )


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    assert obj is not None
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


def _written(fake: server.FakeKube) -> list[tuple[str, str, str]]:
    return [(w.verb, w.kind, w.subresource) for w in fake.writes]


def _apply_gateway(api: apiclient.Cluster, **kwargs: Any) -> None:
    api.apply(gateway.generate_gateway("demo", **kwargs), "waypoint")


def test_a_stuck_rollout_is_reported(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    _apply_gateway(api)
    reconciler.reconcile_gateway("demo", "waypoint")
    # What the Deployment controller writes once progressDeadlineSeconds passes, e.g. while
    # the image cannot be pulled (pkg/controller/deployment/progress.go).
    stuck = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "waypoint-5d4f" has timed out progressing.',
    }
    fake.set_status("apps/v1", "Deployment", "demo", "waypoint", {"conditions": [stuck]})
    reconciler.reconcile_gateway("demo", "waypoint")
    message = _condition(fake.get(*GW), "Programmed")["message"]
    assert message.startswith("Deployment ProgressDeadlineExceeded: ReplicaSet")


def test_apply_creates_objects_then_programmed(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    _apply_gateway(api)
    fake.reset_writes()
    outcome = reconciler.reconcile_gateway("demo", "waypoint")
    assert _written(fake) == [
        ("PATCH", "ServiceAccount", ""),
        ("PATCH", "ConfigMap", ""),
        ("PATCH", "Service", ""),
        ("PATCH", "Deployment", ""),
        ("PATCH", "HorizontalPodAutoscaler", ""),
        ("PUT", "Gateway", "status"),
    ]
    assert not outcome.programmed
    gw = fake.get(*GW)
    assert _condition(gw, "Accepted")["status"] == "True"
    assert _condition(gw, "Programmed")["reason"] == "Pending"
    # Until a replica is ready the condition names what the pods need, for the user to check.
    waiting = _condition(gw, "Programmed")["message"]
    assert "Deployment demo/waypoint" in waiting
    assert f"image {version.default_image()}" in waiting
    assert "Secret demo/waypoint-spiffe" in waiting
    deployment = fake.get("apps/v1", "Deployment", "demo", "waypoint")
    assert deployment is not None
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == gw["metadata"]["uid"]  # type: ignore[index]
    config_map = fake.get("v1", "ConfigMap", "demo", "waypoint-envoy-config")
    assert config_map is not None
    assert (
        yaml.safe_load(config_map["data"]["envoy.yaml"])["node"]["id"] == "waypoint~demo~waypoint"
    )

    world.mark_ready(fake, "demo", "waypoint")
    assert reconciler.reconcile_gateway("demo", "waypoint").programmed
    gw = fake.get(*GW)
    assert _condition(gw, "Programmed")["status"] == "True"
    service = fake.get("v1", "Service", "demo", "waypoint")
    assert service is not None
    assert gw is not None
    assert gw["status"]["addresses"] == [
        {"type": "IPAddress", "value": service["spec"]["clusterIP"]}
    ]


def test_second_reconcile_writes_nothing(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    _apply_gateway(api, min_replicas=2)
    reconciler.reconcile_gateway("demo", "waypoint")
    world.mark_ready(fake, "demo", "waypoint", 2)
    reconciler.reconcile_gateway("demo", "waypoint")
    reconciler.reconcile_gateway_class("waypoint")
    reconciler.reconcile_route_status()
    fake.reset_writes()
    assert reconciler.reconcile_gateway("demo", "waypoint").writes == 0
    assert reconciler.reconcile_gateway_class("waypoint").writes == 0
    assert reconciler.reconcile_route_status().writes == 0
    assert fake.writes == []


def test_a_change_makes_exactly_the_right_update(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    _apply_gateway(api)
    reconciler.reconcile_gateway("demo", "waypoint")
    config_before = fake.get("v1", "ConfigMap", "demo", "waypoint-envoy-config")

    # More replicas: the HPA changes and a PDB appears; the Envoy config does not move. The
    # status records the annotations it was computed from (for --wait).
    _apply_gateway(api, min_replicas=2, max_replicas=8)
    fake.reset_writes()
    reconciler.reconcile_gateway("demo", "waypoint")
    assert _written(fake) == [
        ("PATCH", "HorizontalPodAutoscaler", ""),
        ("PATCH", "PodDisruptionBudget", ""),
        ("PUT", "Gateway", "status"),
    ]
    hpa = fake.get("autoscaling/v2", "HorizontalPodAutoscaler", "demo", "waypoint")
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert fake.get("v1", "ConfigMap", "demo", "waypoint-envoy-config") == config_before

    # Back to one replica: the PDB goes.
    _apply_gateway(api)
    fake.reset_writes()
    reconciler.reconcile_gateway("demo", "waypoint")
    assert _written(fake) == [
        ("PATCH", "HorizontalPodAutoscaler", ""),
        ("DELETE", "PodDisruptionBudget", ""),
        ("PUT", "Gateway", "status"),
    ]

    # A new bound Service changes the rendered config: the ConfigMap and the pod template's
    # config hash change (a rolling update), and the Gateway's Bound condition counts it.
    api.create(world.service("demo", "reviews", "10.96.1.20"))
    fake.reset_writes()
    reconciler.reconcile_gateway("demo", "waypoint")
    assert _written(fake) == [
        ("PATCH", "ConfigMap", ""),
        ("PATCH", "Deployment", ""),
        ("PUT", "Gateway", "status"),
    ]
    assert "serves 2 Service(s)" in _condition(fake.get(*GW), "waypoint.dev/Bound")["message"]
    config_after = fake.get("v1", "ConfigMap", "demo", "waypoint-envoy-config")
    assert config_after is not None
    assert "reviews.demo" in config_after["data"]["envoy.yaml"]


def test_drift_is_repaired(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    _apply_gateway(api)
    reconciler.reconcile_gateway("demo", "waypoint")
    api.merge_patch(
        apiclient.SERVICE,
        "demo",
        "waypoint",
        {"spec": {"ports": [{"name": "x", "port": 1}]}},
        "kubectl-edit",
    )
    fake.reset_writes()
    reconciler.reconcile_gateway("demo", "waypoint")
    assert _written(fake) == [("PATCH", "Service", "")]
    service = fake.get("v1", "Service", "demo", "waypoint")
    assert service is not None
    # Our ports are back; the port the other manager added is theirs under SSA, not drift.
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"x": 1, "mesh": 15008, "status-port": 15021, "http-envoy-prom": 15090}
    fake.reset_writes()
    reconciler.reconcile_gateway("demo", "waypoint")
    assert fake.writes == []


def test_foreign_object_is_left_alone_and_reported(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    foreign = world.service("demo", "waypoint", "10.96.9.9", waypoint=None)
    api.create(foreign)
    before = fake.get("v1", "Service", "demo", "waypoint")
    _apply_gateway(api)
    fake.reset_writes()
    outcome = reconciler.reconcile_gateway("demo", "waypoint")
    assert fake.get("v1", "Service", "demo", "waypoint") == before
    assert ("PATCH", "Service", "") not in _written(fake)
    assert ("PATCH", "Deployment", "") in _written(fake)
    (problem,) = outcome.foreign
    assert "Service demo/waypoint exists and is not managed by waypoint-controller" in problem
    programmed = _condition(fake.get(*GW), "Programmed")
    assert programmed["status"] == "False"
    assert "Service demo/waypoint" in programmed["message"]


def test_invalid_settings_are_reported_on_the_gateway(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    gw = gateway.generate_gateway("demo")
    gw["metadata"]["annotations"] = {"waypoint.dev/max-replicas": "lots"}
    api.apply(gw, "waypoint")
    fake.reset_writes()
    reconciler.reconcile_gateway("demo", "waypoint")
    assert _written(fake) == [("PUT", "Gateway", "status")]
    accepted = _condition(fake.get(*GW), "Accepted")
    assert accepted["status"] == "False"
    assert "annotation waypoint.dev/max-replicas='lots'" in accepted["message"]


def test_status_conflict_is_retried(api: apiclient.Cluster, fake: server.FakeKube) -> None:
    _apply_gateway(api)
    touched: list[bool] = []

    def world_that_races() -> list[dict[str, Any]]:
        # Someone labels the Gateway after the reconciler read it: its status PUT gets a 409.
        if not touched:
            api.merge_patch(
                apiclient.GATEWAY,
                "demo",
                "waypoint",
                {"metadata": {"labels": {"team": "a"}}},
                "someone",
            )
            touched.append(True)
        return reconcile.list_world(api)

    racing = reconcile.Reconciler(api, world_that_races)
    racing.reconcile_gateway("demo", "waypoint")
    assert racing.metrics.conflicts._value.get() == 1
    gw = fake.get(*GW)
    assert gw is not None
    assert gw["metadata"]["labels"]["team"] == "a"
    assert _condition(gw, "Accepted")["status"] == "True"


def test_gateway_class_and_route_status(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    _apply_gateway(api)
    reconciler.reconcile_gateway_class("waypoint")
    assert (
        _condition(
            fake.get("gateway.networking.k8s.io/v1", "GatewayClass", "", "waypoint"), "Accepted"
        )["status"]
        == "True"
    )
    reconciler.reconcile_route_status()
    route = fake.get("gateway.networking.k8s.io/v1", "HTTPRoute", "demo", "echo-route")
    assert route is not None
    (parent,) = route["status"]["parents"]
    assert parent["controllerName"] == "waypoint.dev/controller"
    assert parent["parentRef"] == {
        "group": "",
        "kind": "Service",
        "namespace": "demo",
        "name": "echo",
        "port": 80,
    }
    assert {c["type"]: c["status"] for c in parent["conditions"]} == {
        "Accepted": "True",
        "ResolvedRefs": "True",
    }


def test_other_controllers_route_status_is_kept(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    _apply_gateway(api)
    route = api.get(apiclient.HTTP_ROUTE, "demo", "echo-route")
    assert route is not None
    theirs = {
        "parentRef": {"name": "edge", "kind": "Gateway", "group": "gateway.networking.k8s.io"},
        "controllerName": "example.com/other",
        "conditions": [],
    }
    api.replace_status({**route, "status": {"parents": [theirs]}}, "other")
    reconciler.reconcile_route_status()
    route = fake.get("gateway.networking.k8s.io/v1", "HTTPRoute", "demo", "echo-route")
    assert route is not None
    assert [p["controllerName"] for p in route["status"]["parents"]] == [
        "example.com/other",
        "waypoint.dev/controller",
    ]


def test_deleted_gateway_is_a_no_op(
    fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    fake.reset_writes()
    assert reconciler.reconcile_gateway("demo", "absent").writes == 0
    assert fake.writes == []


def test_gateway_class_defaults_apply_to_every_waypoint(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    fake.seed([world.namespace("waypoint-system")])
    api.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "defaults", "namespace": "waypoint-system"},
            "data": {"maxReplicas": "7"},
        }
    )
    gateway_class = world.gateway_class()
    gateway_class["spec"]["parametersRef"] = {
        "group": "",
        "kind": "ConfigMap",
        "name": "defaults",
        "namespace": "waypoint-system",
    }
    api.apply(gateway_class, "installer")
    _apply_gateway(api)
    reconciler.reconcile_gateway("demo", "waypoint")
    hpa = fake.get("autoscaling/v2", "HorizontalPodAutoscaler", "demo", "waypoint")
    assert hpa is not None
    assert hpa["spec"]["maxReplicas"] == 7
    api.delete(apiclient.CONFIG_MAP, "waypoint-system", "defaults")
    reconciler.reconcile_gateway("demo", "waypoint")
    accepted = _condition(fake.get(*GW), "Accepted")
    assert accepted["status"] == "False"
    assert (
        "GatewayClass waypoint: parametersRef ConfigMap waypoint-system/defaults not found"
        in accepted["message"]
    )


def test_a_revision_manages_only_its_own_waypoints(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    """istio.io/rev splits waypoints between controllers, as istiod revisions split objects."""
    canary = reconcile.Reconciler(api, lambda: reconcile.list_world(api), revision="canary")
    default = reconcile.Reconciler(api, lambda: reconcile.list_world(api), revision="default")
    api.apply(gateway.generate_gateway("demo", revision="canary"), "waypoint")
    fake.reset_writes()
    default.reconcile_gateway("demo", "waypoint")
    assert _written(fake) == []  # another revision's waypoint: not even its status
    canary.reconcile_gateway("demo", "waypoint")
    assert ("PATCH", "Deployment", "") in _written(fake)
    assert _condition(fake.get(*GW), "Accepted")["status"] == "True"
    assert gateway.managed_by(gateway.generate_gateway("demo"), "")
    assert gateway.managed_by(gateway.generate_gateway("demo", revision="default"), "")
    assert not gateway.managed_by(gateway.generate_gateway("demo"), "canary")

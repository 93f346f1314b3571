"""Status that tells the truth, against the fake API server through the real client:
per-service-account waypoints fed by Pods (and the Services they cannot bind, reported),
applies the API rejects, the GatewayClass's own parametersRef, listener kinds and attached
routes, per-Gateway metrics, strict adoption and immutable fields."""

from __future__ import annotations

import copy
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import conftest
from tests.fakekube import server, world
from waypoint import cli, pipeline
from waypoint.controller import apiclient, manager, reconcile, trim
from waypoint.kube import gateway

Obj = dict[str, Any]
GW_API = "gateway.networking.k8s.io/v1"
PATIENCE = 20.0  # a deadline for progress on a busy machine, not a speed check


def _condition(obj: Obj | None, kind: str) -> Obj:
    assert obj is not None
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind]
    assert found, f"no {kind} condition in {obj.get('status')}"
    return dict(found[0])


def _written(fake: server.FakeKube) -> list[tuple[str, str, str]]:
    return [(w.verb, w.kind, w.subresource) for w in fake.writes]


def _gw(fake: server.FakeKube, namespace: str, name: str) -> Obj | None:
    return fake.get(GW_API, "Gateway", namespace, name)


def _envoy_config(fake: server.FakeKube, namespace: str, name: str) -> str:
    found = fake.get("v1", "ConfigMap", namespace, f"{name}-envoy-config")
    assert found is not None
    return str(found["data"]["envoy.yaml"])


def pod(namespace: str, name: str, app: str, account: str) -> Obj:
    """A Pod as the API serves it: much more than translation reads."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": app},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{" * 2000},
        },
        "spec": {
            "serviceAccountName": account,
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/app:1",
                    "env": [{"name": "MODE", "value": "prod"}],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def running(ip: str) -> Obj:
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }


def shop(fake: server.FakeKube) -> None:
    """Namespace ``shop`` enrolled in waypoint ``waypoint``, with Services reviews and ratings
    whose Pods run as ServiceAccounts reviews and ratings."""
    fake.seed([world.namespace("shop", {"istio.io/use-waypoint": "waypoint"})])
    for app, ip, pod_ip in (
        ("reviews", "10.96.2.10", "10.0.2.10"),
        ("ratings", "10.96.2.11", "10.0.2.11"),
    ):
        svc = world.service("shop", app, ip, waypoint=None)
        fake.seed(
            [svc, world.endpoint_slice("shop", app, pod_ip), pod("shop", f"{app}-1", app, app)]
        )
        fake.set_status("v1", "Pod", "shop", f"{app}-1", running(pod_ip))


@pytest.fixture
def informed(api: apiclient.Cluster) -> Iterator[manager.Controller]:
    """A controller whose informers run; the test calls its reconciler itself."""
    controller = manager.Controller(api, watch_timeout=5)
    controller.start_informers()
    assert controller.wait_synced(threading.Event())
    yield controller
    controller.stop_informers()
    for informer in controller.informers.values():
        informer.join(10)


def _settle(controller: manager.Controller, fake: server.FakeKube, count: int) -> None:
    """Wait until the informers hold ``count`` Pods (the seeded world has reached them)."""
    conftest.wait_for(
        lambda: len(controller.informers["Pod"].items()) == count, f"{count} cached Pods"
    )


# --- Pods and per-service-account waypoints ------------------------------------------------


def test_service_account_waypoint_serves_its_workloads_and_the_namespace_one_does_not(
    api: apiclient.Cluster, fake: server.FakeKube, informed: manager.Controller
) -> None:
    shop(fake)
    api.apply(gateway.generate_gateway("shop"), "waypoint")
    api.apply(gateway.generate_gateway("shop", "reviews-wp", service_account="reviews"), "waypoint")
    _settle(informed, fake, 2)
    conftest.wait_for(lambda: len(informed.gateways()) == 2, "both Gateways cached")

    # The cache keeps only what translation reads from a Pod.
    cached = {p["metadata"]["name"]: p for p in informed.informers["Pod"].items()}
    reviews = cached["reviews-1"]
    assert reviews["spec"] == {
        "serviceAccountName": "reviews",
        "containers": [{"ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
    }
    assert reviews["status"] == {
        "phase": "Running",
        "podIP": "10.0.2.10",
        "podIPs": [{"ip": "10.0.2.10"}],
    }
    assert set(reviews["metadata"]) == {"name", "namespace", "labels", "resourceVersion"}

    for name in ("waypoint", "reviews-wp"):
        informed.reconciler.reconcile_gateway("shop", name)
    scoped = _envoy_config(fake, "shop", "reviews-wp")
    namespace_wide = _envoy_config(fake, "shop", "waypoint")
    assert "reviews.shop" in scoped
    assert "ratings.shop" not in scoped
    assert "ratings.shop" in namespace_wide
    assert "reviews.shop" not in namespace_wide

    bound = _condition(_gw(fake, "shop", "reviews-wp"), "waypoint.dev/Bound")
    assert (bound["status"], bound["reason"]) == ("True", "Bound")
    assert (
        "serves 1 Service(s) and 0 workload(s) (scoped to ServiceAccount reviews)"
        in (bound["message"])
    )

    informed.reconciler.reconcile_route_status()
    service = fake.get("v1", "Service", "shop", "reviews")
    assert service is not None
    where = _condition(service, "istio.io/WaypointBound")
    assert (where["status"], where["reason"]) == ("True", "WaypointAccepted")
    assert "bound to waypoint shop/reviews-wp" in where["message"]
    assert where["observedGeneration"] == service["metadata"]["generation"]


def test_trimmed_pods_translate_as_the_full_ones() -> None:
    full = []
    for app, ip in (("reviews", "10.0.2.10"), ("ratings", "10.0.2.11")):
        obj = pod("shop", f"{app}-1", app, app)
        obj["metadata"]["labels"]["istio.io/use-waypoint"] = "pods"
        full.append({**obj, "status": running(ip)})
    world_objects = [
        world.namespace("shop", {"istio.io/use-waypoint": "waypoint"}),
        gateway.generate_gateway("shop"),
        gateway.generate_gateway("shop", "pods", "all", "reviews"),
        world.service("shop", "reviews", "10.96.2.10", waypoint=None),
        world.endpoint_slice("shop", "reviews", "10.0.2.10"),
    ]
    trimmed = [trim.pod(obj) for obj in full]
    assert trimmed != full
    assert pipeline.translate_objects(
        [*world_objects, *trimmed], "cluster.local"
    ) == pipeline.translate_objects([*world_objects, *full], "cluster.local")


def test_unknown_service_account_is_reported_on_the_service_and_the_gateway(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    # A Service that names the scoped waypoint, but none of whose Pods is known yet.
    fake.seed(
        [world.namespace("shop"), world.service("shop", "reviews", "10.96.2.10", "reviews-wp")]
    )
    api.apply(gateway.generate_gateway("shop", "reviews-wp", service_account="reviews"), "waypoint")
    reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
    reconciler.reconcile_gateway("shop", "reviews-wp")
    reconciler.reconcile_route_status()

    service = fake.get("v1", "Service", "shop", "reviews")
    unbound = _condition(service, "istio.io/WaypointBound")
    assert (unbound["status"], unbound["reason"]) == ("False", "ServiceAccountUnknown")
    assert "serves only ServiceAccount reviews" in unbound["message"]
    bound = _condition(_gw(fake, "shop", "reviews-wp"), "waypoint.dev/Bound")
    assert (bound["status"], bound["reason"]) == ("False", "ServiceAccountUnknown")
    assert bound["message"].startswith("serves nothing (scoped to ServiceAccount reviews): ")
    assert "Service shop/reviews" in bound["message"]
    # Programmed says whether the objects are up; Bound says the waypoint is idle, and why.
    assert _condition(_gw(fake, "shop", "reviews-wp"), "Programmed")["reason"] == "Pending"

    # The Service's Pod appears: it binds, and the Service's other status is kept.
    fake.seed([pod("shop", "reviews-1", "reviews", "reviews")])
    fake.set_status("v1", "Pod", "shop", "reviews-1", running("10.0.2.10"))
    reconciler.reconcile_gateway("shop", "reviews-wp")
    reconciler.reconcile_route_status()
    assert (
        _condition(fake.get("v1", "Service", "shop", "reviews"), "istio.io/WaypointBound")["status"]
        == "True"
    )
    assert _condition(_gw(fake, "shop", "reviews-wp"), "waypoint.dev/Bound")["status"] == "True"

    # The Service stops naming a waypoint: our condition goes, nothing else is written again.
    api.merge_patch(apiclient.SERVICE, "shop", "reviews", {"metadata": {"labels": None}}, "someone")
    reconciler.reconcile_route_status()
    service = fake.get("v1", "Service", "shop", "reviews")
    assert service is not None
    assert not (service.get("status") or {}).get("conditions")
    fake.reset_writes()
    reconciler.reconcile_route_status()
    assert ("PUT", "Service", "status") not in _written(fake)


def _bound_message(fake: server.FakeKube) -> str:
    gw = _gw(fake, "shop", "reviews-wp")
    conditions = ((gw or {}).get("status") or {}).get("conditions") or []
    return next((c["message"] for c in conditions if c["type"] == "waypoint.dev/Bound"), "")


def _quiesce(controller: manager.Controller) -> None:
    """Work the queue until it stays empty (our own writes requeue the Gateway for a while)."""
    deadline = time.monotonic() + PATIENCE
    while controller.process_one(timeout=0.5):
        if time.monotonic() > deadline:
            pytest.fail(f"the queue never emptied; errors: {controller.errors}")


def test_a_pod_getting_its_ip_requeues_its_waypoint(
    api: apiclient.Cluster, fake: server.FakeKube, informed: manager.Controller
) -> None:
    fake.seed([world.namespace("shop")])
    api.apply(gateway.generate_gateway("shop", "reviews-wp", "workload", "reviews"), "waypoint")
    # Scheduled, not running yet: the waypoint reports the Pod it cannot serve.
    workload = pod("shop", "reviews-1", "reviews", "reviews")
    workload["metadata"]["labels"]["istio.io/use-waypoint"] = "reviews-wp"
    fake.seed([workload])
    _settle(informed, fake, 1)
    informed.enqueue_all()
    _quiesce(informed)
    assert "Pod shop/reviews-1: waypoint shop/reviews-wp: the pod has no IP" in _bound_message(fake)
    assert "10.0.2.10" not in _envoy_config(fake, "shop", "reviews-wp")

    # The kubelet reports its IP: a change to the Pod's status only, yet an input.
    fake.set_status("v1", "Pod", "shop", "reviews-1", running("10.0.2.10"))
    conftest.wait_for(lambda: len(informed.queue) > 0, "the Pod's new IP to requeue its waypoint")
    _quiesce(informed)
    assert "10.0.2.10" in _envoy_config(fake, "shop", "reviews-wp")
    assert "serves 0 Service(s) and 1 workload(s)" in _bound_message(fake)
    assert informed.errors == []

    # A status change translation does not read (a condition) requeues nothing.
    fake.set_status(
        "v1",
        "Pod",
        "shop",
        "reviews-1",
        {**running("10.0.2.10"), "conditions": [{"type": "Ready", "status": "False"}]},
    )
    conftest.wait_for(
        lambda: any(
            c.get("status") == "False"
            for p in [fake.get("v1", "Pod", "shop", "reviews-1") or {}]
            for c in p["status"]["conditions"]
        ),
        "the Pod's condition stored",
    )
    assert not informed.process_one(timeout=1.0)


# --- truthful status --------------------------------------------------------------------------


class RejectingFake(server.FakeKube):
    """The fake API server, with writes to chosen resources refused as an admission webhook,
    a quota or validation would refuse them (the real server's Status body)."""

    def __init__(self) -> None:
        super().__init__(bookmark_interval=0.2)
        self.reject: dict[str, tuple[int, str, str]] = {}  # plural → (code, reason, message)

    def serve(
        self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str
    ) -> tuple[int, Obj, list[str]]:
        for plural, (code, reason, message) in self.reject.items():
            if method in ("PATCH", "PUT", "POST") and f"/{plural}/" in path + "/":
                raise server.ApiError(code, reason, message)
        return super().serve(method, path, query, body, ctype)


@pytest.fixture
def fake() -> Iterator[server.FakeKube]:
    with RejectingFake() as running_fake:
        running_fake.seed([world.gateway_class(), *world.mesh("demo")])
        yield running_fake


def test_a_rejected_apply_is_reported_and_the_other_objects_still_apply(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    assert isinstance(fake, RejectingFake)
    reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    reconciler.reconcile_gateway("demo", "waypoint")
    world.mark_ready(fake, "demo", "waypoint")
    reconciler.reconcile_gateway("demo", "waypoint")
    assert _condition(_gw(fake, "demo", "waypoint"), "Programmed")["status"] == "True"

    fake.reject["horizontalpodautoscalers"] = (
        422,
        "Invalid",
        'HorizontalPodAutoscaler.autoscaling "waypoint" is invalid: admission webhook '
        '"quota.example.com" denied the request: minReplicas 2 exceeds the quota',
    )
    api.apply(gateway.generate_gateway("demo", min_replicas=2), "waypoint")
    fake.reset_writes()
    outcome = reconciler.reconcile_gateway("demo", "waypoint")
    # The disruption budget is applied all the same; the HPA stays as it was.
    assert ("PATCH", "PodDisruptionBudget", "") in _written(fake)
    assert fake.get("policy/v1", "PodDisruptionBudget", "demo", "waypoint") is not None
    hpa = fake.get("autoscaling/v2", "HorizontalPodAutoscaler", "demo", "waypoint")
    assert hpa is not None
    assert hpa["spec"]["minReplicas"] == 1
    gw = _gw(fake, "demo", "waypoint")
    assert gw is not None
    programmed = _condition(gw, "Programmed")
    assert (programmed["status"], programmed["reason"]) == ("False", "Invalid")
    assert "apply HorizontalPodAutoscaler.autoscaling demo/waypoint: 422" in programmed["message"]
    assert "minReplicas 2 exceeds the quota" in programmed["message"]
    assert programmed["observedGeneration"] == gw["metadata"]["generation"]
    assert not outcome.programmed
    assert reconciler.metrics.rejected.labels("demo", "waypoint")._value.get() == 1

    # The webhook relents: the next reconcile applies the HPA and clears the condition.
    fake.reject.clear()
    reconciler.reconcile_gateway("demo", "waypoint")
    assert _condition(_gw(fake, "demo", "waypoint"), "Programmed")["status"] == "True"
    assert reconciler.metrics.rejected.labels("demo", "waypoint")._value.get() == 0


def test_apply_wait_fails_when_the_autoscaler_is_rejected(
    api: apiclient.Cluster,
    fake: server.FakeKube,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert isinstance(fake, RejectingFake)
    kubeconfig = str(fake.write_kubeconfig(tmp_path / "kubeconfig"))
    controller = manager.Controller(api, watch_timeout=5, resync_period=3600)
    stop = threading.Event()
    runner = threading.Thread(target=controller.run, args=(stop,))

    def kubelet() -> None:
        while not stop.is_set():
            if fake.get("apps/v1", "Deployment", "demo", "waypoint") is not None:
                world.mark_ready(fake, "demo", "waypoint")
                return
            time.sleep(0.05)

    helper = threading.Thread(target=kubelet)
    runner.start()
    helper.start()
    wait = ["--wait", "--timeout", "60s", "--kubeconfig", kubeconfig]
    try:
        assert cli.main(["apply", "-n", "demo", *wait]) == 0
        assert "waypoint demo/waypoint is Programmed" in capsys.readouterr().err
        fake.reject["horizontalpodautoscalers"] = (422, "Invalid", "minReplicas exceeds the quota")
        code = cli.main(["apply", "-n", "demo", "--min-replicas", "2", *wait])
        err = capsys.readouterr().err
    finally:
        stop.set()
        helper.join(PATIENCE)
        runner.join(PATIENCE)
    assert code == 1, err
    assert (
        "error: waypoint demo/waypoint is not Programmed: Invalid: apply "
        "HorizontalPodAutoscaler.autoscaling demo/waypoint: 422 minReplicas exceeds the quota"
    ) in err
    assert fake.get("policy/v1", "PodDisruptionBudget", "demo", "waypoint") is not None


def test_a_server_error_is_retried_not_reported(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    assert isinstance(fake, RejectingFake)
    reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    fake.reject["deployments"] = (500, "InternalError", "etcdserver: request timed out")
    with pytest.raises(apiclient.ClusterError, match="500 etcdserver"):
        reconciler.reconcile_gateway("demo", "waypoint")


def test_every_condition_carries_its_objects_generation(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    changed = gateway.generate_gateway("demo")
    changed["spec"]["listeners"][0]["allowedRoutes"] = {"namespaces": {"from": "Same"}}
    api.apply(changed, "waypoint")  # a spec change: generation 2
    reconciler.reconcile_gateway("demo", "waypoint")
    reconciler.reconcile_gateway_class("waypoint")
    reconciler.reconcile_route_status()
    gw = _gw(fake, "demo", "waypoint")
    assert gw is not None
    assert gw["metadata"]["generation"] == 2
    found = list(gw["status"]["conditions"])
    for listener in gw["status"]["listeners"]:
        found += listener["conditions"]
    assert {c["observedGeneration"] for c in found} == {2}
    gateway_class = fake.get(GW_API, "GatewayClass", "", "waypoint")
    route = fake.get(GW_API, "HTTPRoute", "demo", "echo-route")
    service = fake.get("v1", "Service", "demo", "echo")
    for obj, conditions in (
        (gateway_class, (gateway_class or {})["status"]["conditions"]),
        (route, (route or {})["status"]["parents"][0]["conditions"]),
        (service, (service or {})["status"]["conditions"]),
    ):
        assert obj is not None
        assert {c["observedGeneration"] for c in conditions} == {obj["metadata"]["generation"]}


def test_gateway_class_status_reflects_its_own_parameters_ref(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
    fake.seed([world.namespace("waypoint-system")])
    gateway_class = world.gateway_class()
    gateway_class["spec"]["parametersRef"] = {
        "group": "",
        "kind": "ConfigMap",
        "name": "defaults",
        "namespace": "waypoint-system",
    }
    api.apply(gateway_class, "installer")

    def accepted() -> Obj:
        reconciler.reconcile_gateway_class("waypoint")
        return _condition(fake.get(GW_API, "GatewayClass", "", "waypoint"), "Accepted")

    missing = accepted()
    assert (missing["status"], missing["reason"]) == ("False", "InvalidParameters")
    assert "parametersRef ConfigMap waypoint-system/defaults not found" in missing["message"]

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "defaults", "namespace": "waypoint-system"},
        "data": {"maxReplicas": "lots"},
    }
    api.apply(config_map, "installer")
    invalid = accepted()
    assert (invalid["status"], invalid["reason"]) == ("False", "InvalidParameters")
    assert "GatewayClass waypoint: ConfigMap defaults key maxReplicas='lots'" in invalid["message"]

    api.apply({**config_map, "data": {"maxReplicas": "7"}}, "installer")
    assert accepted()["status"] == "True"

    gateway_class["spec"]["parametersRef"] = {"group": "example.com", "kind": "Params", "name": "x"}
    api.apply(gateway_class, "installer")
    wrong_kind = accepted()
    assert (wrong_kind["status"], wrong_kind["reason"]) == ("False", "InvalidParameters")
    assert "must name a core ConfigMap" in wrong_kind["message"]


def test_a_fixed_parameters_config_map_is_noticed_without_a_resync(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    gw = gateway.generate_gateway("demo")
    gw["spec"]["infrastructure"] = {
        "parametersRef": {"group": "", "kind": "ConfigMap", "name": "waypoint-params"}
    }
    api.apply(gw, "waypoint")
    controller = manager.Controller(api, watch_timeout=5, resync_period=3600)
    stop = threading.Event()
    runner = threading.Thread(target=controller.run, args=(stop,))
    runner.start()

    def accepted() -> str:
        live = _gw(fake, "demo", "waypoint") or {}
        conditions = (live.get("status") or {}).get("conditions") or []
        return next((c["status"] for c in conditions if c["type"] == "Accepted"), "")

    try:
        conftest.wait_for(lambda: accepted() == "False", "the missing ConfigMap reported")
        api.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "waypoint-params", "namespace": "demo"},
                "data": {"maxReplicas": "3"},
            }
        )
        conftest.wait_for(lambda: accepted() == "True", "the fixed ConfigMap noticed")
        hpa = fake.get("autoscaling/v2", "HorizontalPodAutoscaler", "demo", "waypoint")
        assert hpa is not None
        assert hpa["spec"]["maxReplicas"] == 3
    finally:
        stop.set()
        runner.join(PATIENCE)


def test_the_class_parameters_config_map_is_watched_too(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    fake.seed([world.namespace("waypoint-system")])
    gateway_class = world.gateway_class()
    gateway_class["spec"]["parametersRef"] = {
        "group": "",
        "kind": "ConfigMap",
        "name": "defaults",
        "namespace": "waypoint-system",
    }
    api.apply(gateway_class, "installer")
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    controller = manager.Controller(api, watch_timeout=5, resync_period=3600)
    stop = threading.Event()
    runner = threading.Thread(target=controller.run, args=(stop,))
    runner.start()

    def accepted(obj: Obj | None) -> str:
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        return next((c["status"] for c in conditions if c["type"] == "Accepted"), "")

    try:
        conftest.wait_for(
            lambda: (
                accepted(fake.get(GW_API, "GatewayClass", "", "waypoint")) == "False"
                and accepted(_gw(fake, "demo", "waypoint")) == "False"
            ),
            "the missing class ConfigMap reported on the class and the Gateway",
        )
        api.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "defaults", "namespace": "waypoint-system"},
                "data": {"maxReplicas": "4"},
            }
        )
        conftest.wait_for(
            lambda: (
                accepted(fake.get(GW_API, "GatewayClass", "", "waypoint")) == "True"
                and accepted(_gw(fake, "demo", "waypoint")) == "True"
            ),
            "the class ConfigMap noticed",
        )
    finally:
        stop.set()
        runner.join(PATIENCE)


def test_listeners_report_supported_kinds_and_attached_routes(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    reconciler.reconcile_gateway("demo", "waypoint")
    (listener,) = (_gw(fake, "demo", "waypoint") or {})["status"]["listeners"]
    assert listener["supportedKinds"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
        {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"},
    ]
    assert listener["attachedRoutes"] == 1  # echo-route, on the Service the waypoint serves

    api.create(world.http_route("demo", "echo-canary", "echo"))
    reconciler.reconcile_gateway("demo", "waypoint")
    (listener,) = (_gw(fake, "demo", "waypoint") or {})["status"]["listeners"]
    assert listener["attachedRoutes"] == 2

    # A kind the listener cannot take is left out and makes ResolvedRefs False.
    gw = gateway.generate_gateway("demo")
    gw["spec"]["listeners"][0]["allowedRoutes"] = {
        "kinds": [
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
            {"group": "gateway.networking.k8s.io", "kind": "TCPRoute"},
        ]
    }
    api.apply(gw, "waypoint")
    reconciler.reconcile_gateway("demo", "waypoint")
    (listener,) = (_gw(fake, "demo", "waypoint") or {})["status"]["listeners"]
    assert listener["supportedKinds"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}
    ]
    resolved = next(c for c in listener["conditions"] if c["type"] == "ResolvedRefs")
    assert (resolved["status"], resolved["reason"]) == ("False", "InvalidRouteKinds")
    assert "gateway.networking.k8s.io/TCPRoute" in resolved["message"]


def test_the_foreign_objects_metric_is_kept_per_gateway(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
    api.create(world.service("demo", "blocked", "10.96.9.9", waypoint=None))  # in blocked's way
    api.apply(gateway.generate_gateway("demo", "blocked"), "waypoint")
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    reconciler.reconcile_gateway("demo", "blocked")
    reconciler.reconcile_gateway("demo", "waypoint")  # a clean one, reconciled last
    foreign = reconciler.metrics.foreign
    assert foreign.labels("demo", "blocked")._value.get() == 1
    assert foreign.labels("demo", "waypoint")._value.get() == 0
    api.delete(apiclient.GATEWAY, "demo", "blocked")
    reconciler.reconcile_gateway("demo", "blocked")
    assert ("demo", "blocked") not in {
        tuple(sample.labels.values()) for sample in foreign.collect()[0].samples
    }


# --- adoption -----------------------------------------------------------------------------------


def test_a_labelled_deployment_without_an_owner_is_not_adopted(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
    squatter = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "waypoint",
            "namespace": "demo",
            "labels": {"app.kubernetes.io/managed-by": "waypoint-controller"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "legacy"}},
            "template": {
                "metadata": {"labels": {"app": "legacy"}},
                "spec": {"containers": [{"name": "legacy", "image": "registry.invalid/legacy"}]},
            },
        },
    }
    api.create(squatter)
    before = fake.get("apps/v1", "Deployment", "demo", "waypoint")
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    fake.reset_writes()
    outcome = reconciler.reconcile_gateway("demo", "waypoint")
    assert fake.get("apps/v1", "Deployment", "demo", "waypoint") == before
    assert not [w for w in _written(fake) if w[1] == "Deployment"]
    (problem,) = outcome.foreign
    assert "Deployment demo/waypoint has the app.kubernetes.io/managed-by=waypoint-controller" in (
        problem
    )
    assert "no controller ownerReference to Gateway demo/waypoint; not adopted" in problem
    programmed = _condition(_gw(fake, "demo", "waypoint"), "Programmed")
    assert programmed["status"] == "False"
    assert "not adopted" in programmed["message"]


def test_an_immutable_change_to_our_deployment_recreates_it(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    reconciler.reconcile_gateway("demo", "waypoint")
    ours = fake.get("apps/v1", "Deployment", "demo", "waypoint")
    assert ours is not None
    wanted_selector = ours["spec"]["selector"]
    # As an older controller left it: another selector. The API cannot change a selector in
    # place, so the older object is made as it would have been: created with that selector.
    stale = copy.deepcopy(ours)
    for field in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"):
        stale["metadata"].pop(field, None)
    stale.pop("status", None)
    stale["metadata"].get("annotations", {}).pop(reconcile.APPLIED_HASH, None)  # an older body
    stale["spec"]["selector"] = {
        "matchLabels": {**wanted_selector["matchLabels"], "app": "old-waypoint"}
    }
    template_labels = stale["spec"]["template"]["metadata"]["labels"]
    stale["spec"]["template"]["metadata"]["labels"] = {**template_labels, "app": "old-waypoint"}
    assert api.delete(apiclient.DEPLOYMENT, "demo", "waypoint")
    fake.seed([stale])
    fake.reset_writes()
    outcome = reconciler.reconcile_gateway("demo", "waypoint")
    assert [w for w in _written(fake) if w[1] == "Deployment"] == [
        ("DELETE", "Deployment", ""),
        ("PATCH", "Deployment", ""),
    ]
    (recreated,) = outcome.recreated
    assert recreated == "Deployment demo/waypoint (spec.selector)"
    now = fake.get("apps/v1", "Deployment", "demo", "waypoint")
    assert now is not None
    assert now["spec"]["selector"] == wanted_selector
    assert now["metadata"]["uid"] != ours["metadata"]["uid"]
    # What is not ours is never recreated: the ownership check comes first.
    assert reconcile.immutable_changes(now, now) == []

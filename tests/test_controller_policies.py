"""Policies through the controller, against the fake API server with our CRDs registered:
policy status (PolicyAncestorStatus), the extauthz sidecar and its ConfigMap appearing only
while an ExtAuthzPolicy needs them, rolling on a Rego change, zero writes when unchanged, and a
cluster without the policy CRDs."""

from __future__ import annotations

import copy
import logging
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.fakekube import catalog, crschema, server, world
from waypoint import wellknown
from waypoint.controller import apiclient, manager, reconcile
from waypoint.kube import constants, gateway

POLICY_API = "policy.waypoint.dev/v1alpha1"
GW = ("gateway.networking.k8s.io/v1", "Gateway", "demo", "waypoint")
EXTAUTHZ_CM = ("v1", "ConfigMap", "demo", "waypoint-extauthz")
DEPLOYMENT = ("apps/v1", "Deployment", "demo", "waypoint")
REGO = """package envoy.authz

import rego.v1

default allow := false

allow if input.source_principal != ""
"""
JWKS = '{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}'


def authz_policy(decision: str = "envoy/authz/allow") -> dict[str, Any]:
    return {
        "apiVersion": POLICY_API,
        "kind": "ExtAuthzPolicy",
        "metadata": {"name": "echo-authz", "namespace": "demo"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
            "decision": decision,
        },
    }


def traffic_policy(lb_type: str = "LeastRequest") -> dict[str, Any]:
    return {
        "apiVersion": POLICY_API,
        "kind": "TrafficPolicy",
        "metadata": {"name": "echo-traffic", "namespace": "demo"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
            "loadBalancer": {"type": lb_type},
        },
    }


def request_authentication() -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "corp", "namespace": "demo"},
        "spec": {
            "targetRefs": [
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
            ],
            "jwtRules": [{"issuer": "https://issuer.example", "audiences": ["echo"], "jwks": JWKS}],
        },
    }


def rego_config_map(text: str = REGO, name: str = "waypoint-extauthz-policy") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "demo"},
        "data": {"policy.rego": text, "README": "not a module"},
    }


@pytest.fixture
def api(fake: server.FakeKube, tmp_path: pathlib.Path) -> Iterator[apiclient.Cluster]:
    with world.connect(fake, tmp_path) as connected:
        connected.apply(gateway.generate_gateway("demo"), "waypoint")
        yield connected


@pytest.fixture
def reconciler(api: apiclient.Cluster) -> reconcile.Reconciler:
    return reconcile.Reconciler(
        api, lambda: reconcile.list_world(api), clock=lambda: "2026-01-01T00:00:00Z"
    )


def _written(fake: server.FakeKube) -> list[tuple[str, str, str]]:
    return [(w.verb, w.kind, w.subresource) for w in fake.writes]


def _containers(fake: server.FakeKube) -> dict[str, dict[str, Any]]:
    deployment = fake.get(*DEPLOYMENT)
    assert deployment is not None
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def _config_hash(fake: server.FakeKube) -> str:
    deployment = fake.get(*DEPLOYMENT)
    assert deployment is not None
    return str(
        deployment["spec"]["template"]["metadata"]["annotations"][constants.CONFIG_HASH_ANNOTATION]
    )


def _bootstrap(fake: server.FakeKube) -> dict[str, Any]:
    config_map = fake.get("v1", "ConfigMap", "demo", "waypoint-envoy-config")
    assert config_map is not None
    loaded: dict[str, Any] = yaml.safe_load(config_map["data"]["envoy.yaml"])
    return loaded


def _extauthz_cluster(fake: server.FakeKube) -> dict[str, Any] | None:
    clusters = _bootstrap(fake)["static_resources"]["clusters"]
    return next((c for c in clusters if c["name"] == "extauthz"), None)


def _generated(fake: server.FakeKube) -> list[dict[str, Any]]:
    found = []
    for api_version, kind in (
        ("v1", "ServiceAccount"),
        ("v1", "ConfigMap"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ):
        for obj in fake.objects(api_version, kind):
            labels = obj["metadata"].get("labels") or {}
            if labels.get(wellknown.MANAGED_BY_LABEL) == wellknown.MANAGED_BY_VALUE:
                found.append(obj)
    return found


def _crd_schema(kind: str) -> dict[str, Any]:
    for path in sorted(catalog.CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if (
                doc
                and doc.get("kind") == "CustomResourceDefinition"
                and doc["spec"]["names"]["kind"] == kind
            ):
                schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                return schema
    raise AssertionError(f"no CRD for {kind}")


def test_policy_adds_sidecar_and_config_then_removal_prunes_them(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    reconciler.reconcile_gateway("demo", "waypoint")
    assert list(_containers(fake)) == ["envoy"]
    assert fake.get(*EXTAUTHZ_CM) is None
    assert _extauthz_cluster(fake) is None
    before = _config_hash(fake)

    fake.seed([rego_config_map(), authz_policy(), request_authentication()])
    fake.reset_writes()
    outcome = reconciler.reconcile_gateway("demo", "waypoint")
    assert not outcome.foreign
    assert _written(fake) == [
        ("PATCH", "ConfigMap", ""),  # the bootstrap, now with ext_authz
        ("PATCH", "ConfigMap", ""),  # <gateway>-extauthz, new
        ("PATCH", "Deployment", ""),
    ]
    containers = _containers(fake)
    assert list(containers) == ["envoy", "extauthz"]
    sidecar = containers["extauthz"]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9464}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9464}
    assert _config_hash(fake) != before

    config_map = fake.get(*EXTAUTHZ_CM)
    assert config_map is not None
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["listen"] == "127.0.0.1:9191"
    assert config["metrics_listen"] == "0.0.0.0:9464"
    assert config["policy"]["modules"] == ["/etc/extauthz-policies/policy.rego"]
    (provider,) = config["jwt"]["providers"]
    assert provider["issuer"] == "https://issuer.example"
    # Envoy calls the sidecar where it listens.
    extauthz_cluster = _extauthz_cluster(fake)
    assert extauthz_cluster is not None
    address = extauthz_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9191}
    volumes = {
        v["name"]: v
        for v in fake.get(*DEPLOYMENT)["spec"]["template"]["spec"]["volumes"]  # type: ignore[index]
    }
    assert volumes["extauthz-policy"]["configMap"] == {
        "name": "waypoint-extauthz-policy",
        "items": [{"key": "policy.rego", "path": "policy.rego"}],
    }
    for obj in _generated(fake):
        kubernetes_validate.validate(obj, "1.32.0", strict=True)

    fake.reset_writes()
    assert reconciler.reconcile_gateway("demo", "waypoint").writes == 0
    assert fake.writes == []

    api.delete(apiclient.EXTAUTHZ_POLICY, "demo", "echo-authz")
    fake.reset_writes()
    reconciler.reconcile_gateway("demo", "waypoint")
    assert ("DELETE", "ConfigMap", "") in _written(fake)
    assert list(_containers(fake)) == ["envoy"]
    assert fake.get(*EXTAUTHZ_CM) is None
    assert _extauthz_cluster(fake) is None
    # The RequestAuthentication still applies on its own (Envoy's jwt_authn); without it
    # the config is the one before any policy.
    assert _config_hash(fake) != before
    api.delete(apiclient.REQUEST_AUTHENTICATION, "demo", "corp")
    reconciler.reconcile_gateway("demo", "waypoint")
    assert _config_hash(fake) == before
    fake.reset_writes()
    assert reconciler.reconcile_gateway("demo", "waypoint").writes == 0


def test_rego_change_rolls_the_pods(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    fake.seed([rego_config_map(), authz_policy()])
    reconciler.reconcile_gateway("demo", "waypoint")
    before = _config_hash(fake)
    api.apply(rego_config_map(REGO + "\nextra := true\n"), "user")
    fake.reset_writes()
    reconciler.reconcile_gateway("demo", "waypoint")
    # extauthz loads Rego once: only a new pod template picks the change up.
    assert _written(fake) == [("PATCH", "Deployment", "")]
    assert _config_hash(fake) != before


def test_rego_config_map_named_by_annotation(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    gw = gateway.generate_gateway("demo")
    gw["metadata"].setdefault("annotations", {})["waypoint.dev/extauthz-policy-configmap"] = (
        "shop-rego"
    )
    api.apply(gw, "waypoint")
    fake.seed([rego_config_map(name="shop-rego"), authz_policy()])
    reconciler.reconcile_gateway("demo", "waypoint")
    volumes = {
        v["name"]: v
        for v in fake.get(*DEPLOYMENT)["spec"]["template"]["spec"]["volumes"]  # type: ignore[index]
    }
    assert volumes["extauthz-policy"]["configMap"]["name"] == "shop-rego"


def test_missing_rego_keeps_the_last_good_objects_and_says_why(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    reconciler.reconcile_gateway("demo", "waypoint")
    fake.seed([authz_policy()])
    fake.reset_writes()
    reconciler.reconcile_gateway("demo", "waypoint")
    # Nothing rolled out: pods without Rego would fail every authorized request.
    assert _written(fake) == [("PUT", "Gateway", "status")]
    assert list(_containers(fake)) == ["envoy"]
    gw = fake.get(*GW)
    assert gw is not None
    accepted = next(c for c in gw["status"]["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False"
    assert accepted["reason"] == "InvalidParameters"
    assert "ConfigMap demo/waypoint-extauthz-policy" in accepted["message"]
    assert "not found" in accepted["message"]

    fake.seed([rego_config_map(REGO, name="waypoint-extauthz-policy") | {"data": {"x": "y"}}])
    reconciler.reconcile_gateway("demo", "waypoint")
    gw = fake.get(*GW)
    accepted = next(c for c in gw["status"]["conditions"] if c["type"] == "Accepted")  # type: ignore[index]
    assert "has no *.rego key" in accepted["message"]


def test_extauthz_setting_false_keeps_the_sidecar_out(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    gw = gateway.generate_gateway("demo")
    gw["metadata"].setdefault("annotations", {})["waypoint.dev/extauthz"] = "false"
    api.apply(gw, "waypoint")
    fake.seed([authz_policy()])
    reconciler.reconcile_gateway("demo", "waypoint")
    assert list(_containers(fake)) == ["envoy"]
    assert fake.get(*EXTAUTHZ_CM) is None
    # The filter is still there: a sidecar the user brings serves it.
    assert _extauthz_cluster(fake) is not None


def test_policy_status_is_written_once(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    # The CRD's schema accepts it (a real API server stores it); the translator does not.
    bad = traffic_policy()
    bad["metadata"]["name"] = "bad-traffic"
    bad["spec"]["rateLimit"] = {"local": {"tokens": 5, "fillInterval": "0s"}}
    fake.seed([authz_policy(), traffic_policy(), bad, request_authentication()])
    fake.reset_writes()
    reconciler.reconcile_route_status()
    statuses = sorted(kind for verb, kind, sub in _written(fake) if sub == "status")
    assert "ExtAuthzPolicy" in statuses
    assert statuses.count("TrafficPolicy") == 2
    assert "RequestAuthentication" in statuses

    authz = fake.get(POLICY_API, "ExtAuthzPolicy", "demo", "echo-authz")
    assert authz is not None
    (accepted,) = authz["status"]["conditions"]
    assert (accepted["type"], accepted["status"]) == ("Accepted", "True")
    (ancestor,) = authz["status"]["ancestors"]
    assert ancestor["ancestorRef"] == {
        "group": "",
        "kind": "Service",
        "namespace": "demo",
        "name": "echo",
    }
    assert ancestor["controllerName"] == constants.CONTROLLER_NAME
    assert [c["reason"] for c in ancestor["conditions"]] == ["Accepted"]

    invalid = fake.get(POLICY_API, "TrafficPolicy", "demo", "bad-traffic")
    assert invalid is not None
    (condition,) = invalid["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "Invalid")
    assert "spec.rateLimit.local.fillInterval" in condition["message"]
    (ancestor,) = invalid["status"]["ancestors"]
    assert ancestor["ancestorRef"]["name"] == "echo"
    assert ancestor["conditions"][0]["reason"] == "Invalid"

    ra = fake.get("security.istio.io/v1", "RequestAuthentication", "demo", "corp")
    assert ra is not None
    assert ra["status"]["ancestors"][0]["ancestorRef"]["kind"] == "Gateway"
    assert ra["status"]["ancestors"][0]["conditions"][0]["reason"] == "Accepted"
    assert "conditions" not in ra["status"]  # istiod's to write

    # The status we write fits the CRD's schema (bounds included).
    for kind, name in (("ExtAuthzPolicy", "echo-authz"), ("TrafficPolicy", "echo-traffic")):
        stored = fake.get(POLICY_API, kind, "demo", name)
        assert crschema.admit(stored, _crd_schema(kind))[1:] == ([], [])
    assert fake.warned == []  # the server pruned nothing the controller wrote

    fake.reset_writes()
    assert reconciler.reconcile_route_status().writes == 0
    assert fake.writes == []


def test_policy_status_keeps_other_controllers_ancestors(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    fake.seed([authz_policy()])
    theirs = {
        "ancestorRef": {"group": "", "kind": "Service", "namespace": "demo", "name": "echo"},
        "controllerName": "example.com/other",
        "conditions": [],
    }
    fake.set_status(POLICY_API, "ExtAuthzPolicy", "demo", "echo-authz", {"ancestors": [theirs]})
    reconciler.reconcile_route_status()
    found = fake.get(POLICY_API, "ExtAuthzPolicy", "demo", "echo-authz")
    assert found is not None
    controllers = [a["controllerName"] for a in found["status"]["ancestors"]]
    assert controllers == ["example.com/other", constants.CONTROLLER_NAME]


def test_controller_follows_policy_and_rego_events(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    labeled = rego_config_map()
    labeled["metadata"]["labels"] = {constants.EXTAUTHZ_POLICY_LABEL: "true"}
    fake.seed([labeled])
    controller = manager.Controller(api, watch_timeout=5)
    assert "ExtAuthzPolicy" in controller.informers
    controller.start_informers()
    try:
        assert controller.wait_synced(threading.Event())
        controller.enqueue_all()
        while controller.process_one(timeout=0.05):
            pass
        assert list(_containers(fake)) == ["envoy"]
        api.apply(authz_policy(), "user")
        # The informer sees the policy and requeues the waypoint and the policy status.
        _drain_until(controller, lambda: "extauthz" in _containers(fake))
        _drain_until(
            controller,
            lambda: bool(
                (fake.get(POLICY_API, "ExtAuthzPolicy", "demo", "echo-authz") or {}).get("status")
            ),
        )
        # A labeled Rego ConfigMap is watched: its edit rolls the pods without a resync.
        before = _config_hash(fake)
        # A copy: the fake's seed stored ``labeled`` itself, and editing it in place would
        # change the stored object behind the server's back, with no watch event.
        edited = copy.deepcopy(labeled)
        edited["data"]["policy.rego"] = REGO + "\nextra := true\n"
        api.apply(edited, "user")
        _drain_until(controller, lambda: _config_hash(fake) != before)
        assert not controller.errors
    finally:
        for informer in controller.informers.values():
            informer.stop()
        for informer in controller.informers.values():
            informer.join(10)


def _drain_until(controller: manager.Controller, until: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20.0  # progress deadline on a busy machine, not a speed check
    while not until():
        if time.monotonic() > deadline:
            pytest.fail(f"no progress; errors: {controller.errors}")
        controller.process_one(timeout=0.05)


def test_missing_policy_crds_are_logged_not_fatal(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with server.FakeKube(policies=False) as fake:
        fake.seed([world.gateway_class(), *world.mesh("demo")])
        with world.connect(fake, tmp_path) as api, caplog.at_level(logging.WARNING):
            controller = manager.Controller(api, watch_timeout=5)
            controller.start_informers()
            try:
                # Left out of the world, and synced: nothing waits for them.
                assert controller.wait_synced(threading.Event())
                assert controller.informers["ExtAuthzPolicy"].unavailable is not None
                assert controller.informers["Gateway"].unavailable is None
                (verdict,) = controller.class_verdicts()
                assert (verdict.type, verdict.status) == ("OptionalKindsAvailable", False)
            finally:
                controller.stop_informers()
            # list_world skips them too, so one-shot reconciles work as before.
            api.apply(gateway.generate_gateway("demo"), "waypoint")
            rec = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
            assert rec.reconcile_gateway("demo", "waypoint").writes > 0
    messages = " ".join(r.getMessage() for r in caplog.records)
    for kind in ("ExtAuthzPolicy", "TrafficPolicy", "RequestAuthentication"):
        assert f"does not serve {kind}" in messages


def test_opa_url_needs_no_rego_config_map(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    gw = gateway.generate_gateway("demo")
    gw["metadata"].setdefault("annotations", {})["waypoint.dev/extauthz-opa-url"] = (
        "http://127.0.0.1:8181"
    )
    api.apply(gw, "waypoint")
    fake.seed([authz_policy()])
    reconciler.reconcile_gateway("demo", "waypoint")
    sidecar = _containers(fake)["extauthz"]
    assert [m["name"] for m in sidecar["volumeMounts"]] == ["extauthz-config", "tmp"]
    config_map = fake.get(*EXTAUTHZ_CM)
    assert config_map is not None
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["policy"] == {"engine": "opa", "opa": {"url": "http://127.0.0.1:8181"}}


def _authorization_policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], **spec},
    }


def test_authorization_policy_status_names_the_field(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    bad = {"rules": [{"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"]}}]}]}
    fake.seed([_authorization_policy("ok", {"rules": [{}]}), _authorization_policy("bad", bad)])
    reconciler.reconcile_route_status()
    ok = fake.get("security.istio.io/v1", "AuthorizationPolicy", "demo", "ok")
    assert ok is not None
    (ancestor,) = ok["status"]["ancestors"]
    assert ancestor["ancestorRef"]["name"] == "echo"
    assert ancestor["controllerName"] == constants.CONTROLLER_NAME
    assert ancestor["conditions"][0]["reason"] == "Accepted"
    assert "conditions" not in ok["status"]  # istiod's to write
    invalid = fake.get("security.istio.io/v1", "AuthorizationPolicy", "demo", "bad")
    assert invalid is not None
    (condition,) = invalid["status"]["ancestors"][0]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "Invalid")
    assert "spec.rules[0].from[0].source.remoteIpBlocks" in condition["message"]

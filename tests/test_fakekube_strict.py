"""The fake API server refuses and rewrites what kube-apiserver refuses and rewrites, seen through
the real ``kubernetes`` client: CRD rules, custom-resource schemas, immutable fields, canonical
quantities, server-side apply merging by list-map keys, stale resourceVersions, 429s and
requests that hang. The rules and their sources are in ``tests/fakekube``."""

from __future__ import annotations

import copy
import json
import pathlib
import urllib.error
import urllib.request
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes.dynamic import exceptions as dyn_errors

from tests.fakekube import catalog, server
from waypoint.controller import apiclient

Obj = dict[str, Any]
CRD_KIND = apiclient.Kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")
JOB = apiclient.Kind("batch/v1", "Job")


def _status(exc: BaseException) -> Obj:
    assert isinstance(exc, (dyn_errors.DynamicApiError, k8s_client.ApiException))
    body: Obj = json.loads(exc.body or "{}")
    return body


def _fails(call: Any, *args: Any, **kwargs: Any) -> Obj:
    """The Status the server answered a failing call with."""
    with pytest.raises((dyn_errors.DynamicApiError, k8s_client.ApiException)) as caught:
        call(*args, **kwargs)
    return _status(caught.value)


# --- CustomResourceDefinitions -----------------------------------------------------------


def _widget_crd(spec_schema: Obj) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "names": {
                "kind": "Widget",
                "plural": "widgets",
                "singular": "widget",
                "listKind": "WidgetList",
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}
                    },
                }
            ],
        },
    }


def test_a_crd_that_breaks_the_rules_is_refused_with_422(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    closed = {
        "type": "object",
        "properties": {"size": {"type": "integer"}},
        "additionalProperties": False,
    }
    crds = api.resource(CRD_KIND)
    status = _fails(crds.create, body=_widget_crd(closed))
    field = "spec.validation.openAPIV3Schema.properties[spec].additionalProperties"
    assert status["code"] == 422
    assert status["reason"] == "Invalid"
    assert status["message"] == (
        'CustomResourceDefinition.apiextensions.k8s.io "widgets.example.dev" is invalid: '
        f"{field}: Forbidden: additionalProperties and properties are mutual exclusive"
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueForbidden",
            "message": "Forbidden: additionalProperties and properties are mutual exclusive",
            "field": field,
        }
    ]
    assert status["details"]["kind"] == "CustomResourceDefinition"
    assert (
        fake.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "widgets.example.dev")
        is None
    )
    assert fake.writes == []


def test_a_crd_update_that_breaks_the_rules_is_refused(api: apiclient.Cluster) -> None:
    crds = api.resource(CRD_KIND)
    good = crds.create(
        body=_widget_crd({"type": "object", "properties": {"size": {"type": "integer"}}})
    ).to_dict()
    untyped = copy.deepcopy(good)
    untyped["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "size"
    ] = {"minimum": 1}
    status = _fails(crds.replace, body=untyped)
    assert status["details"]["causes"][0]["field"] == (
        "spec.validation.openAPIV3Schema.properties[spec].properties[size].type"
    )
    assert "must not be empty for specified object fields" in status["message"]


def _shipped_crds() -> list[Obj]:
    return [
        doc
        for path in sorted(catalog.CRD_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]


def test_the_shipped_crds_install_and_serve_their_kinds(tmp_path: pathlib.Path) -> None:
    with server.FakeKube(policies=False) as bare:
        bare.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}])
        with apiclient.Cluster.connect(str(bare.write_kubeconfig(tmp_path / "kubeconfig"))) as api:
            assert not api.serves(apiclient.TRAFFIC_POLICY)
            for crd in _shipped_crds():
                api.create(crd)
            api.dynamic.resources.invalidate_cache()
            api._resources.clear()
            created = api.create(_traffic_policy({"loadBalancer": {"type": "Random"}}))
            assert created["spec"]["loadBalancer"] == {"type": "Random"}


# --- custom resources against their schema -----------------------------------------------


def _traffic_policy(spec: Obj, name: str = "tp") -> Obj:
    return {
        "apiVersion": "policy.waypoint.dev/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], **spec},
    }


def test_custom_resources_are_validated_against_their_schema(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    bad = _traffic_policy({"loadBalancer": {"type": "Fastest"}, "retry": {"attempts": 500}})
    status = _fails(api.resource(apiclient.TRAFFIC_POLICY).create, body=bad, namespace="demo")
    assert status["code"] == 422
    assert {cause["field"]: cause["reason"] for cause in status["details"]["causes"]} == {
        "spec.loadBalancer.type": "FieldValueNotSupported",
        "spec.retry.attempts": "FieldValueInvalid",
    }
    assert 'spec.loadBalancer.type: Unsupported value: "Fastest"' in status["message"]
    missing = _traffic_policy({"timeout": {}})
    status = _fails(api.resource(apiclient.TRAFFIC_POLICY).create, body=missing, namespace="demo")
    assert [c["message"] for c in status["details"]["causes"]] == ["Required value"]
    assert status["details"]["causes"][0]["field"] == "spec.timeout.request"
    wrong_type = _traffic_policy({"circuitBreaker": {"maxConnections": "lots"}})
    status = _fails(
        api.resource(apiclient.TRAFFIC_POLICY).create, body=wrong_type, namespace="demo"
    )
    assert "spec.circuitBreaker.maxConnections in body must be of type integer" in status["message"]
    assert fake.objects("policy.waypoint.dev/v1alpha1", "TrafficPolicy") == []


def test_cel_rules_are_enforced(api: apiclient.Cluster) -> None:
    hashless = _traffic_policy({"loadBalancer": {"type": "ConsistentHash"}})
    status = _fails(api.resource(apiclient.TRAFFIC_POLICY).create, body=hashless, namespace="demo")
    assert status["message"] == (
        'TrafficPolicy.policy.waypoint.dev "tp" is invalid: spec.loadBalancer: Invalid value: '
        '"object": consistentHash is required for, and only for, type ConsistentHash'
    )
    wrong_group = _traffic_policy({"timeout": {"request": "1s"}})
    wrong_group["spec"]["targetRefs"][0]["group"] = "gateway.networking.k8s.io"
    status = _fails(
        api.resource(apiclient.TRAFFIC_POLICY).create, body=wrong_group, namespace="demo"
    )
    assert status["details"]["causes"][0]["field"] == "spec.targetRefs[0]"
    assert 'Service targets have group ""' in status["message"]


def test_unknown_fields_are_pruned_with_a_warning_or_refused_when_strict(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    custom = k8s_client.CustomObjectsApi(api.api_client)
    where = ("policy.waypoint.dev", "v1alpha1", "demo", "trafficpolicies")
    body = _traffic_policy({"timeout": {"request": "1s", "perTry": "1s"}, "surprise": True})
    created: Any
    created, code, headers = custom.create_namespaced_custom_object_with_http_info(
        *where, body=body
    )
    assert code == 201
    assert created["spec"]["timeout"] == {"request": "1s"}
    assert "surprise" not in created["spec"]
    assert set(headers.getlist("Warning")) == {
        '299 - "unknown field \\"spec.timeout.perTry\\""'.replace("\\", ""),
        '299 - "unknown field \\"spec.surprise\\""'.replace("\\", ""),
    }
    body["metadata"]["name"] = "strict"
    with pytest.raises(k8s_client.ApiException) as caught:
        custom.create_namespaced_custom_object(*where, body=body, field_validation="Strict")
    assert caught.value.status == 400
    assert (
        'strict decoding error: unknown field "spec.timeout.perTry", unknown field "spec.surprise"'
        in (_status(caught.value)["message"])
    )
    assert fake.get("policy.waypoint.dev/v1alpha1", "TrafficPolicy", "demo", "strict") is None


def test_defaults_are_applied(api: apiclient.Cluster) -> None:
    created = api.create(
        {
            "apiVersion": "policy.waypoint.dev/v1alpha1",
            "kind": "ExtAuthzPolicy",
            "metadata": {"name": "az", "namespace": "demo"},
            "spec": {
                "targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                "decision": "envoy/authz/allow",
                "jwt": {},
            },
        }
    )
    assert created["spec"]["failureMode"] == "Closed"
    assert created["spec"]["timeout"] == "200ms"
    assert created["spec"]["jwt"] == {"requirement": "Optional"}


# --- immutable fields --------------------------------------------------------------------


def _deployment(selector: Obj | None = None, cpu: str = "100m") -> Obj:
    labels = {"app": "web", "tier": "front"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {
            "selector": {"matchLabels": selector or {"app": "web"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "web:1",
                            "resources": {
                                "requests": {"cpu": cpu, "memory": "1Gi"},
                                "limits": {"cpu": "1000m"},
                            },
                        }
                    ]
                },
            },
        },
    }


def test_deployment_selector_is_immutable(api: apiclient.Cluster) -> None:
    api.apply(_deployment(), "owner")
    with pytest.raises(apiclient.ClusterError) as caught:
        api.apply(_deployment({"app": "web", "tier": "front"}), "owner")
    assert "422" in str(caught.value)
    assert 'Deployment.apps "web" is invalid: spec.selector: Invalid value: ' in str(caught.value)
    assert "field is immutable" in str(caught.value)
    # The same refusal through a PUT.
    live = api.get(apiclient.DEPLOYMENT, "demo", "web")
    assert live is not None
    live["spec"]["selector"] = {"matchLabels": {"tier": "front"}}
    with pytest.raises(
        apiclient.ClusterError, match=r"spec\.selector: Invalid value.*field is immutable"
    ):
        api.replace(live)


def test_deployment_selector_must_select_the_template(api: apiclient.Cluster) -> None:
    with pytest.raises(apiclient.ClusterError, match="`selector` does not match template `labels`"):
        api.apply(_deployment({"app": "other"}), "owner")


def test_service_cluster_ip_may_not_change_once_set(api: apiclient.Cluster) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc", "namespace": "demo"},
        "spec": {"ports": [{"port": 80}]},
    }
    created = api.create(service)
    assigned = created["spec"]["clusterIP"]
    # Leaving it out keeps it, as the server fills allocated values back in.
    updated = api.replace({**created, "spec": {"ports": [{"port": 81}]}})
    assert updated["spec"]["clusterIP"] == assigned
    moved = {
        **updated,
        "spec": {**updated["spec"], "clusterIP": "10.96.9.9", "clusterIPs": ["10.96.9.9"]},
    }
    with pytest.raises(apiclient.ClusterError) as caught:
        api.replace(moved)
    assert (
        'Service "svc" is invalid: spec.clusterIPs[0]: Invalid value: ["10.96.9.9"]: may not change once set'
        in str(caught.value)
    )


def test_job_template_is_immutable(api: apiclient.Cluster) -> None:
    job: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": "demo"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "run", "image": "tool:1"}],
                }
            }
        },
    }
    api.apply(job, "owner")
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "tool:2"
    with pytest.raises(
        apiclient.ClusterError, match=r"spec\.template: Invalid value: .*field is immutable"
    ):
        api.apply(job, "owner")


def test_disruption_budget_selector_is_mutable(api: apiclient.Cluster) -> None:
    pdb: Obj = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "pdb", "namespace": "demo"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "a"}}},
    }
    api.apply(pdb, "owner")
    pdb["spec"]["selector"] = {"matchLabels": {"app": "b"}}
    assert api.apply(pdb, "owner")["spec"]["selector"] == {"matchLabels": {"app": "b"}}


# --- quantities --------------------------------------------------------------------------


def test_quantities_are_stored_in_canonical_form(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    stored = api.apply(_deployment(cpu="0.5"), "owner")
    resources = stored["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1"}}
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "maxReplicas": 3,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "memory",
                        "target": {"type": "AverageValue", "averageValue": "1024Mi"},
                    },
                }
            ],
        },
    }
    stored = api.apply(hpa, "owner")
    assert stored["spec"]["metrics"][0]["resource"]["target"]["averageValue"] == "1Gi"
    with pytest.raises(
        apiclient.ClusterError, match="quantities must match the regular expression"
    ):
        api.apply(_deployment(cpu="half"), "owner")


def test_a_naive_drift_check_reapplies_forever_against_canonical_quantities(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    """Why the controller must send canonical quantities (its own check compares values)."""
    desired = _deployment(cpu="0.5")
    for _ in range(3):
        live = api.get(apiclient.DEPLOYMENT, "demo", "web")
        wanted = desired["spec"]["template"]["spec"]["containers"][0]["resources"]
        if live is None or live["spec"]["template"]["spec"]["containers"][0]["resources"] != wanted:
            api.apply(desired, "naive")
    assert len(fake.writes) == 3


# --- server-side apply -------------------------------------------------------------------


def _containers(obj: Obj) -> dict[str, Obj]:
    return {c["name"]: c for c in obj["spec"]["template"]["spec"]["containers"]}


def test_apply_merges_containers_ports_and_env_by_their_keys(api: apiclient.Cluster) -> None:
    mine = _deployment()
    mine["spec"]["template"]["spec"]["containers"][0].update(
        env=[{"name": "A", "value": "1"}], ports=[{"containerPort": 8080}]
    )
    api.apply(mine, "mine")
    theirs = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "env": [{"name": "B", "value": "2"}],
                            "ports": [{"containerPort": 8080, "protocol": "UDP"}],
                        },
                        {"name": "sidecar", "image": "side:1"},
                    ]
                }
            }
        },
    }
    merged = api.apply(theirs, "theirs", force=False)
    app = _containers(merged)["app"]
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    # containerPort alone is not the key: 8080/TCP (the default) and 8080/UDP are two ports.
    assert app["ports"] == [{"containerPort": 8080}, {"containerPort": 8080, "protocol": "UDP"}]
    assert list(_containers(merged)) == ["app", "sidecar"]
    # Dropping a field from our apply removes only what we alone owned.
    mine["spec"]["template"]["spec"]["containers"][0]["env"] = []
    again = api.apply(mine, "mine")
    assert _containers(again)["app"]["env"] == [{"name": "B", "value": "2"}]
    assert "sidecar" in _containers(again)
    fields = {e["manager"]: e["fieldsV1"] for e in again["metadata"]["managedFields"]}
    theirs_fields = fields["theirs"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert 'k:{"name":"app"}' in theirs_fields
    assert (
        'k:{"containerPort":8080,"protocol":"UDP"}' in theirs_fields['k:{"name":"app"}']["f:ports"]
    )


def test_apply_conflicts_between_managers_unless_forced(api: apiclient.Cluster) -> None:
    api.apply(_deployment(), "mine")
    theirs = _deployment()
    theirs["spec"]["template"]["spec"]["containers"][0]["image"] = "web:2"
    with pytest.raises(apiclient.Conflict) as caught:
        api.apply(theirs, "theirs", force=False)
    assert (
        'Apply failed with 1 conflict: conflict with "mine": .spec.template.spec.containers[name="app"].image'
        in (str(caught.value))
    )
    forced = api.apply(theirs, "theirs", force=True)
    assert _containers(forced)["app"]["image"] == "web:2"
    # The field changed hands: now "mine" conflicts.
    with pytest.raises(apiclient.Conflict, match='conflict with "theirs"'):
        api.apply(_deployment(), "mine", force=False)


def test_lists_without_map_keys_are_atomic(api: apiclient.Cluster) -> None:
    hpa: Obj = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "maxReplicas": 3,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ],
        },
    }
    api.apply(hpa, "mine")
    other = copy.deepcopy(hpa)
    other["spec"]["metrics"][0]["resource"]["name"] = "memory"
    with pytest.raises(apiclient.Conflict, match=r'conflict with "mine": \.spec\.metrics$'):
        api.apply(other, "theirs", force=False)


def test_custom_resource_lists_merge_by_the_crds_map_keys(api: apiclient.Cluster) -> None:
    schema = {
        "type": "object",
        "properties": {
            "rules": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "weight": {"type": "integer"}},
                },
            },
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    api.create(_widget_crd(schema))
    api.dynamic.resources.invalidate_cache()

    def widget(rules: list[Obj], tags: list[str]) -> Obj:
        return {
            "apiVersion": "example.dev/v1",
            "kind": "Widget",
            "metadata": {"name": "w", "namespace": "demo"},
            "spec": {"rules": rules, "tags": tags},
        }

    api.apply(widget([{"name": "a", "weight": 1}], ["x"]), "mine")
    merged = api.apply(widget([{"name": "b", "weight": 2}], ["x"]), "theirs", force=False)
    assert merged["spec"]["rules"] == [{"name": "a", "weight": 1}, {"name": "b", "weight": 2}]
    with pytest.raises(apiclient.Conflict, match=r"\.spec\.tags"):
        api.apply(widget([{"name": "b", "weight": 2}], ["y"]), "theirs", force=False)


def test_status_conditions_merge_by_type(api: apiclient.Cluster, fake: server.FakeKube) -> None:
    api.apply(_deployment(), "owner")
    status = api.resource(apiclient.DEPLOYMENT).status

    def apply_status(manager: str, condition: Obj) -> Obj:
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "demo"},
            "status": {"conditions": [condition]},
        }
        result: Obj = status.server_side_apply(
            body=body, name="web", namespace="demo", field_manager=manager
        ).to_dict()
        return result

    apply_status("a", {"type": "Available", "status": "True"})
    both = apply_status("b", {"type": "Progressing", "status": "True"})
    assert [c["type"] for c in both["status"]["conditions"]] == ["Available", "Progressing"]


# --- resourceVersion, 429 and hangs ------------------------------------------------------


def test_stale_resource_version_is_a_409_naming_the_resource(api: apiclient.Cluster) -> None:
    created = api.apply(_deployment(), "owner")
    api.merge_patch(apiclient.DEPLOYMENT, "demo", "web", {"spec": {"replicas": 2}})
    status = _fails(api.resource(apiclient.DEPLOYMENT).replace, body=created, namespace="demo")
    assert status["code"] == 409
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on deployments.apps "web": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )


def _raw_get(fake: server.FakeKube, path: str) -> tuple[int, dict[str, str], Obj]:
    request = urllib.request.Request(
        fake.url + path, headers={"Authorization": f"Bearer {server.TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_throttled_requests_get_429_with_retry_after(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    fake.faults.throttle("list", "configmaps", retry_after=7)
    code, headers, status = _raw_get(fake, "/api/v1/namespaces/demo/configmaps")
    assert (code, headers["Retry-After"]) == (429, "7")
    assert status["reason"] == "TooManyRequests"
    assert status["details"] == {"retryAfterSeconds": 7}
    assert _raw_get(fake, "/api/v1/namespaces/demo/configmaps")[0] == 200
    # The real client (urllib3 under it) honours Retry-After: it waits and tries again.
    rule = fake.faults.throttle("list", "configmaps", retry_after=1, times=2)
    assert api.resource(apiclient.CONFIG_MAP).get(namespace="demo").items == []
    assert rule.seen == 2
    # Throttling that never ends reaches the caller once the client's retries are spent.
    fake.faults.throttle("get", "configmaps", retry_after=1, times=-1)
    with pytest.raises(dyn_errors.DynamicApiError) as caught:
        api.resource(apiclient.CONFIG_MAP).get(name="cm", namespace="demo")
    assert caught.value.status == 429


def test_hung_requests_are_held_until_the_client_gives_up(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    rule = fake.faults.hang("get", "services", seconds=2.0, times=-1, namespace="demo")
    with pytest.raises(urllib3.exceptions.HTTPError):
        api.resource(apiclient.SERVICE).get(name="echo", namespace="demo", _request_timeout=0.2)
    assert rule.seen >= 1
    # Other resources are served meanwhile; once cleared, the GET is served at once.
    assert api.get(apiclient.CONFIG_MAP, "demo", "none") is None
    fake.faults.clear()
    assert (
        api.resource(apiclient.SERVICE).get(name="echo", namespace="demo").metadata.name == "echo"
    )


def test_apply_of_a_custom_resource_prunes_before_merging(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    policy = _traffic_policy({"timeout": {"request": "1s"}})
    api.apply(policy, "mine")
    policy["spec"]["timeout"]["perTry"] = "1s"
    applied = api.apply(policy, "mine")
    assert applied["spec"]["timeout"] == {"request": "1s"}
    assert fake.warned == ['unknown field "spec.timeout.perTry"']
    fields = applied["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:timeout"]
    assert fields == {"f:request": {}}  # nobody owns a field that was never stored


def test_deleting_a_crd_deletes_its_objects_and_stops_serving_them(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    crd = _widget_crd({"type": "object", "properties": {"size": {"type": "integer"}}})
    api.create(crd)
    api.dynamic.resources.invalidate_cache()
    widget = {
        "apiVersion": "example.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "demo"},
        "spec": {"size": 3},
    }
    assert api.create(widget)["spec"] == {"size": 3}
    assert api.delete(CRD_KIND, "", "widgets.example.dev")
    code, _, status = _raw_get(fake, "/apis/example.dev/v1/namespaces/demo/widgets/w")
    assert (code, status["reason"]) == (404, "NotFound")
    api.create(crd)  # served again, and empty
    assert fake.get("example.dev/v1", "Widget", "demo", "w") is None


def _raw_post(fake: server.FakeKube, path: str, body: bytes, content_type: str) -> tuple[int, Obj]:
    request = urllib.request.Request(
        fake.url + path,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {server.TOKEN}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "as-json"}}', "json"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: as-yaml\n", "yaml"),
    ],
)
def test_bodies_are_taken_as_json_or_yaml(
    fake: server.FakeKube, body: bytes, content_type: str
) -> None:
    """The API server decodes JSON and YAML bodies; the fake reads JSON first, YAML else."""
    code, created = _raw_post(
        fake, "/api/v1/namespaces/demo/configmaps", body, f"application/{content_type}"
    )
    assert code == 201, created
    assert created["metadata"]["name"] == f"as-{content_type}"


def test_a_body_that_is_neither_json_nor_yaml_is_a_400(fake: server.FakeKube) -> None:
    code, status = _raw_post(
        fake, "/api/v1/namespaces/demo/configmaps", b"{unclosed: [", "application/json"
    )
    assert code == 400
    assert status["reason"] == "BadRequest"

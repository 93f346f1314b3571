"""Gateway → generated objects: shape, settings precedence, determinism, and schema validity
(every object validates against the Kubernetes 1.32 schemas with kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from waypoint import names, wellknown
from waypoint.envoy import options as envoy_options
from waypoint.istioca import client
from waypoint.kube import constants, gateway, merge, objects, settings

K8S_VERSION = "1.32.0"
OPTIONS = envoy_options.BootstrapOptions()
# The ConfigMap carries the rendered bootstrap as opaque text; these tests are about the
# Kubernetes objects around it (tests/test_kube_render.py renders real configs).
BOOTSTRAP = "rendered: bootstrap\n"


def _gateway(**kwargs: Any) -> dict[str, Any]:
    gw = gateway.generate_gateway("demo", **kwargs)
    gw["metadata"]["uid"] = "0b5c6c1e-0000-4000-8000-000000000001"
    return gw


def _by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objs}


def _desired(gw: dict[str, Any], **changes: Any) -> dict[str, dict[str, Any]]:
    conf = settings.resolve(gw, None, settings.Settings(**changes))
    return _by_kind(objects.desired_objects(gw, conf, BOOTSTRAP, OPTIONS))


def test_default_objects_and_autoscaling() -> None:
    objs = _desired(_gateway())
    assert list(objs) == [
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
    ]
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 5)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 80
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "waypoint",
    }
    # The HPA owns the replica count; the Deployment must not fight it.
    assert "replicas" not in objs["Deployment"]["spec"]


def test_every_object_is_labeled_and_owned() -> None:
    for obj in _desired(_gateway(min_replicas=2)).values():
        meta = obj["metadata"]
        assert meta["namespace"] == "demo"
        assert meta["labels"][wellknown.MANAGED_BY_LABEL] == "waypoint-controller"
        assert meta["labels"][wellknown.GATEWAY_NAME_LABEL] == "waypoint"
        (owner,) = meta["ownerReferences"]
        assert owner["kind"] == "Gateway"
        assert owner["controller"] is True
        assert owner["uid"].startswith("0b5c6c1e")


def test_pdb_only_above_one_replica() -> None:
    assert "PodDisruptionBudget" not in _desired(_gateway())
    objs = _desired(_gateway(min_replicas=2, max_replicas=4))
    assert objs["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    assert objs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2


def test_autoscaling_off_sets_replicas() -> None:
    objs = _desired(_gateway(), autoscaling=False, min_replicas=3, max_replicas=3)
    assert "HorizontalPodAutoscaler" not in objs
    assert objs["Deployment"]["spec"]["replicas"] == 3


def test_service_ports() -> None:
    ports = _desired(_gateway())["Service"]["spec"]["ports"]
    assert [(p["name"], p["port"], p.get("appProtocol")) for p in ports] == [
        ("mesh", 15008, "hbone"),
        ("status-port", 15021, None),
        ("http-envoy-prom", 15090, None),
    ]


def test_pod_security_probes_and_resources() -> None:
    pod = _desired(_gateway())["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # No policy asks for extauthz: no sidecar (tests/test_kube_extauthz.py covers it).
    (envoy,) = pod["containers"]
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert envoy["startupProbe"]["httpGet"]["port"] == 15021
    assert envoy["securityContext"]["readOnlyRootFilesystem"] is True
    assert envoy["securityContext"]["runAsNonRoot"] is True
    assert envoy["resources"]["requests"]["cpu"]
    mounts = {m["name"]: m["mountPath"] for m in envoy["volumeMounts"]}
    assert mounts[objects.CERT_VOLUME] == OPTIONS.cert_dir
    assert envoy["args"][:2] == ["-c", "/etc/waypoint/envoy.yaml"]


def test_images_have_no_registry_host() -> None:
    pod = _desired(_gateway())["Deployment"]["spec"]["template"]["spec"]
    for container in pod["containers"]:
        repository = container["image"].split(":")[0]
        assert "/" not in repository
        assert "." not in repository


def test_cert_sources() -> None:
    gw = _gateway()
    gw["metadata"]["annotations"] = {"waypoint.dev/cert-source": "csi"}
    csi = _desired(gw)["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"csi"} <= next(v for v in csi if v["name"] == objects.CERT_VOLUME).keys()
    # The default: a Secret, which needs no add-on on the cluster.
    secret = _desired(_gateway())["Deployment"]["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in secret if v["name"] == objects.CERT_VOLUME)
    assert volume["secret"]["secretName"] == "waypoint-spiffe"
    assert [i["path"] for i in volume["secret"]["items"]] == [
        "cert-chain.pem",
        "key.pem",
        "root-cert.pem",
    ]


def test_istio_cert_source_runs_istio_certs_beside_envoy() -> None:
    gw = _gateway()
    gw["metadata"]["annotations"] = {
        "waypoint.dev/cert-source": "istio",
        "waypoint.dev/ca-address": "istiod-canary.istio-system.svc:15012",
        "waypoint.dev/cluster-id": "east",
    }
    pod = _desired(gw)["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The certificate lives in memory, written by our containers, read by Envoy.
    assert volumes[objects.CERT_VOLUME] == {
        "name": objects.CERT_VOLUME,
        "emptyDir": {"medium": "Memory"},
    }
    # Istio's waypoint template: the projected token for istiod and the mesh root ConfigMap.
    assert volumes["istio-token"]["projected"]["sources"] == [
        {
            "serviceAccountToken": {
                "audience": "istio-ca",
                "expirationSeconds": 43200,
                "path": "istio-token",
            }
        }
    ]
    assert volumes["istiod-ca-cert"]["configMap"] == {"name": "istio-ca-root-cert"}
    (init,) = pod["initContainers"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "istio-certs")
    for container, once in ((init, True), (sidecar, False)):
        assert container["command"] == ["waypoint"]
        args = container["args"]
        assert args[0] == "istio-certs"
        assert ("--once" in args) is once
        flags = dict(zip(args[1::2], args[2::2], strict=False))
        assert flags["--ca-address"] == "istiod-canary.istio-system.svc:15012"
        assert flags["--cluster-id"] == "east"
        assert flags["--trust-domain"] == OPTIONS.trust_domain
        assert flags["--cert-dir"] == OPTIONS.cert_dir
        assert flags["--token"] == client.DEFAULT_TOKEN_PATH
        assert flags["--root-cert"] == client.DEFAULT_ROOT_CERT_PATH
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
        assert env == {
            "POD_NAMESPACE": "metadata.namespace",
            "SERVICE_ACCOUNT": "spec.serviceAccountName",
        }
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert not mounts[objects.CERT_VOLUME].get("readOnly")
        assert mounts["istio-token"]["readOnly"]
    envoy = next(c for c in pod["containers"] if c["name"] == "envoy")
    cert_mount = next(m for m in envoy["volumeMounts"] if m["name"] == objects.CERT_VOLUME)
    assert cert_mount["readOnly"]
    assert "istio-token" not in {m["name"] for m in envoy["volumeMounts"]}
    # The token is the projected one only; the API server token stays unmounted.
    assert pod["automountServiceAccountToken"] is False


def test_istio_cert_source_settings_are_checked() -> None:
    gw = _gateway()
    gw["metadata"]["annotations"] = {"waypoint.dev/ca-address": "istiod"}
    with pytest.raises(settings.SettingsError, match="ca-address='istiod': must be HOST:PORT"):
        settings.resolve(gw)


def test_a_sandwiched_waypoint_fetches_no_certificate_even_with_istio_source() -> None:
    gw = _gateway()
    gw["metadata"]["annotations"] = {"waypoint.dev/cert-source": "istio"}
    conf = settings.resolve(gw)
    objs = objects.desired_objects(gw, conf, BOOTSTRAP, OPTIONS, proxy_port=15088)
    pod = _by_kind(objs)["Deployment"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == ["envoy"]
    assert {v["name"] for v in pod["volumes"]}.isdisjoint(
        {objects.CERT_VOLUME, "istio-token", "istiod-ca-cert"}
    )
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_other_cert_sources_have_no_istio_containers() -> None:
    pod = _desired(_gateway())["Deployment"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == ["envoy"]


def test_config_change_rolls_the_deployment() -> None:
    gw = _gateway()
    conf = settings.resolve(gw)
    first = _by_kind(objects.desired_objects(gw, conf, BOOTSTRAP, OPTIONS))
    again = _by_kind(objects.desired_objects(gw, conf, BOOTSTRAP, OPTIONS))
    changed = _by_kind(objects.desired_objects(gw, conf, BOOTSTRAP + "# v2\n", OPTIONS))
    assert first == again
    annotation = constants.CONFIG_HASH_ANNOTATION
    template = "Deployment", "spec", "template", "metadata", "annotations"

    def hash_of(objs: dict[str, Any]) -> str:
        node = objs[template[0]]
        for key in template[1:]:
            node = node[key]
        return str(node[annotation])

    assert hash_of(first) != hash_of(changed)
    assert first["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_settings_precedence_annotation_over_config_map() -> None:
    gw = _gateway()
    gw["spec"]["infrastructure"] = {
        "parametersRef": {"group": "", "kind": "ConfigMap", "name": "tuning"}
    }
    gw["metadata"]["annotations"] = {"waypoint.dev/max-replicas": "9"}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "tuning", "namespace": "demo"},
        "data": {"minReplicas": "2", "maxReplicas": "3", "targetCPUUtilizationPercentage": "60"},
    }
    assert settings.parameters_ref(gw) == "tuning"
    conf = settings.resolve(gw, config_map)
    assert (conf.min_replicas, conf.max_replicas, conf.cpu_utilization) == (2, 9, 60)


def test_istio_style_overlay_from_config_map() -> None:
    gw = _gateway()
    config_map = {
        "metadata": {"name": "tuning"},
        "data": {
            "deployment": "spec:\n  template:\n    spec:\n      containers:\n"
            "      - name: envoy\n        resources:\n          requests:\n            cpu: 500m\n",
            "horizontalPodAutoscaler": "spec:\n  maxReplicas: 12\n",
        },
    }
    conf = settings.resolve(gw, config_map)
    objs = _by_kind(objects.desired_objects(gw, conf, BOOTSTRAP, OPTIONS))
    envoy = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert envoy["resources"]["requests"] == {"cpu": "500m", "memory": "128Mi"}
    assert objs["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 12
    assert (
        objs["Deployment"]["metadata"]["labels"][wellknown.MANAGED_BY_LABEL]
        == "waypoint-controller"
    )


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"waypoint.dev/min-replicas": "zero"}, "waypoint.dev/min-replicas='zero'"),
        ({"waypoint.dev/min-replicas": "0"}, "must be at least 1"),
        ({"waypoint.dev/cpu-target": "150"}, "between 1 and 100"),
        (
            {"waypoint.dev/min-replicas": "4", "waypoint.dev/max-replicas": "2"},
            "below min replicas",
        ),
        ({"waypoint.dev/cert-source": "vault"}, "waypoint.dev/cert-source"),
    ],
)
def test_bad_settings_name_the_gateway_and_key(annotations: dict[str, str], message: str) -> None:
    gw = _gateway()
    gw["metadata"]["annotations"] = annotations
    with pytest.raises(settings.SettingsError, match="Gateway demo/waypoint") as info:
        settings.resolve(gw)
    assert message in str(info.value)


def test_parameters_ref_must_be_a_config_map() -> None:
    gw = _gateway()
    gw["spec"]["infrastructure"] = {
        "parametersRef": {"group": "example.com", "kind": "Params", "name": "x"}
    }
    with pytest.raises(settings.SettingsError, match="must name a core ConfigMap"):
        settings.parameters_ref(gw)


def test_names_and_inverses() -> None:
    object_names = names.names_for("demo", "waypoint")
    assert object_names.config_map == "waypoint-envoy-config"
    assert names.parse_config_map_name(object_names.config_map) == "waypoint"
    for kind in (
        "ServiceAccount",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ):
        assert names.gateway_of(kind, "waypoint") == "waypoint"
    assert names.gateway_of("ConfigMap", "a-envoy-config-envoy-config") == "a-envoy-config"
    assert object_names.extauthz_config_map == "waypoint-extauthz"
    assert names.gateway_of("ConfigMap", object_names.extauthz_config_map) == "waypoint"
    assert names.gateway_of("ConfigMap", "a-extauthz-envoy-config") == "a-extauthz"
    assert names.gateway_of("ConfigMap", "a-envoy-config-extauthz") == "a-envoy-config"
    with pytest.raises(ValueError, match="not a waypoint extauthz"):
        names.parse_extauthz_config_map_name("-extauthz")
    with pytest.raises(ValueError, match="not a waypoint config"):
        names.parse_config_map_name("other")
    with pytest.raises(names.InvalidName, match=r"Gateway demo/Bad\.Name"):
        names.names_for("demo", "Bad.Name")


def test_generate_gateway() -> None:
    gw = gateway.generate_gateway("demo", "wp", "all", "reviews", 2, 6)
    assert gw["spec"] == {
        "gatewayClassName": "waypoint",
        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
    }
    assert gw["metadata"]["labels"] == {"istio.io/waypoint-for": "all"}
    assert gw["metadata"]["annotations"] == {
        "istio.io/for-service-account": "reviews",
        "waypoint.dev/min-replicas": "2",
        "waypoint.dev/max-replicas": "6",
    }
    assert gateway.is_waypoint(gw)
    assert not gateway.problems(gw)
    assert gateway.service_account(gw) == "reviews"
    with pytest.raises(ValueError, match="--for must be one of"):
        gateway.generate_gateway("demo", traffic_type="everything")
    with pytest.raises(ValueError, match="below --min-replicas"):
        gateway.generate_gateway("demo", min_replicas=3, max_replicas=2)


def test_gateway_problems() -> None:
    gw = _gateway()
    gw["spec"]["listeners"] = [{"name": "http", "port": 80, "protocol": "HTTP"}]
    (problem,) = gateway.problems(gw)
    assert "needs a listener with protocol HBONE on port 15008" in problem


def test_strategic_merge_subset() -> None:
    base = {
        "a": {"b": 1, "c": 2},
        "items": [{"name": "x", "v": 1}, {"name": "y", "v": 2}],
        "tags": [1, 2],
    }
    patch = {"a": {"c": None, "d": 4}, "items": [{"name": "y", "v": 3}, {"name": "z"}], "tags": [9]}
    assert merge.merge(base, patch) == {
        "a": {"b": 1, "d": 4},
        "items": [{"name": "x", "v": 1}, {"name": "y", "v": 3}, {"name": "z"}],
        "tags": [9],
    }


@pytest.mark.parametrize("min_replicas", [1, 3])
@pytest.mark.parametrize("cert_source", ["csi", "secret", "istio"])
def test_generated_objects_validate_against_kubernetes_schemas(
    min_replicas: int, cert_source: str
) -> None:
    gw = _gateway(min_replicas=min_replicas, max_replicas=5, service_account="reviews")
    gw["metadata"]["annotations"]["waypoint.dev/cert-source"] = cert_source
    for obj in _desired(gw).values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)

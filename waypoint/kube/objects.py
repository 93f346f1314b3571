"""Gateway → the objects the controller applies for it, as plain dicts in a fixed order.

Output is deterministic: the same Gateway, settings and rendered config give byte-identical
objects, which is what lets the controller skip writes when nothing changed. A change of the
rendered config changes the pod template's ``waypoint.dev/config-hash`` annotation, so the
Deployment rolls (maxUnavailable 0) instead of serving a stale bootstrap.

A waypoint behind Istio's ztunnel sandwich (``proxy_port`` set) differs in three ways: its
Service and container expose the PROXY port, the pod carries no certificate (no cert volume,
no SDS files), and the pod is enrolled in ambient mode (``istio.io/dataplane-mode: ambient``)
instead of opted out, because its ztunnel terminates HBONE for it and captures its upstream
traffic (docs/istio.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from waypoint import names, wellknown
from waypoint.envoy import options as envoy_options
from waypoint.envoy import secrets
from waypoint.kube import constants, extauthz, gateway, merge, settings

Obj = dict[str, Any]

# The UID/GID Istio's proxies run as; the csi-driver-spiffe fs-group matches it.
PROXY_UID = 1337
CONFIGMAP_LIMIT = 1_000_000  # bytes; the API server refuses objects above ~1 MiB
CSI_DRIVER = "spiffe.csi.cert-manager.io"
CERT_VOLUME = "spiffe-credentials"
# certSource istio: the names, paths and token settings of Istio's waypoint template.
ISTIO_TOKEN_VOLUME = "istio-token"
ISTIO_TOKEN_MOUNT = "/var/run/secrets/tokens"
ISTIO_TOKEN_PATH = "istio-token"
ISTIO_CA_AUDIENCE = "istio-ca"
ISTIO_TOKEN_EXPIRATION = 43200
ISTIO_CA_ROOT_VOLUME = "istiod-ca-cert"
ISTIO_CA_ROOT_MOUNT = "/var/run/secrets/istio"
ISTIO_CERTS_METRICS_PORT = 15092


def desired_objects(
    gw: Mapping[str, Any],
    conf: settings.Settings,
    bootstrap_yaml: str,
    options: envoy_options.BootstrapOptions,
    sidecar: extauthz.Sidecar | None = None,
    proxy_port: int | None = None,
) -> list[Obj]:
    """ServiceAccount, ConfigMap(s), Service, Deployment, then the HPA and PDB when enabled.

    With a ``sidecar`` the extauthz container joins the pod and its config ConfigMap
    ``<gateway>-extauthz`` is generated; without one, neither exists. ``proxy_port``: the
    waypoint sits behind ztunnel's sandwich (``model.Waypoint.proxy_port``).
    """
    namespace, name = gateway.key(gw)
    object_names = names.names_for(namespace, name)
    files = config_files(bootstrap_yaml, options, sds=proxy_port is None)
    size = sum(len(text.encode()) for text in files.values())
    if size > CONFIGMAP_LIMIT:
        raise ValueError(
            f"Gateway {namespace}/{name}: the rendered Envoy config is {size} bytes, "
            f"above the ConfigMap limit of {CONFIGMAP_LIMIT}"
        )
    base = _Base(gw, object_names, proxy_port)
    result = [_overlay(conf, "serviceAccount", service_account(base)), config_map(base, files)]
    if sidecar is not None:
        result.append(extauthz_config_map(base, sidecar))
    result += [
        _overlay(conf, "service", service(base, options)),
        _overlay(conf, "deployment", deployment(base, conf, options, files, sidecar)),
    ]
    if conf.autoscaling:
        result.append(_overlay(conf, "horizontalPodAutoscaler", autoscaler(base, conf)))
    if conf.min_replicas > 1:
        result.append(_overlay(conf, "podDisruptionBudget", disruption_budget(base)))
    return result


def pod_inputs(files: dict[str, str], sidecar: extauthz.Sidecar | None) -> dict[str, str]:
    """Everything the pod reads once at start: its config hash covers all of it."""
    inputs = dict(files)
    if sidecar is not None:
        inputs["extauthz/" + constants.EXTAUTHZ_CONFIG_KEY] = sidecar.config_yaml
        inputs["extauthz/rego"] = sidecar.policy_digest
    return inputs


def config_hash(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name, text in sorted(files.items()):
        digest.update(f"{name}\0{len(text)}\0{text}".encode())
    return digest.hexdigest()[:16]


class _Base:
    """What every generated object of one Gateway shares: names, labels, owner."""

    def __init__(
        self, gw: Mapping[str, Any], object_names: names.ObjectNames, proxy_port: int | None
    ) -> None:
        self.gateway = gw
        self.proxy_port = proxy_port
        self.names = object_names
        self.namespace, self.name = gateway.key(gw)
        infra = (gw.get("spec") or {}).get("infrastructure") or {}
        self.extra_labels: dict[str, str] = dict(infra.get("labels") or {})
        self.extra_annotations: dict[str, str] = dict(infra.get("annotations") or {})

    def selector(self) -> dict[str, str]:
        return {wellknown.GATEWAY_NAME_LABEL: self.name}

    def labels(self) -> dict[str, str]:
        # Ours last: infrastructure.labels may add, never take over the managed-by label.
        return {
            **self.extra_labels,
            wellknown.MANAGED_BY_LABEL: wellknown.MANAGED_BY_VALUE,
            wellknown.GATEWAY_NAME_LABEL: self.name,
            constants.NAME_LABEL: self.name,
            constants.COMPONENT_LABEL: "waypoint",
        }

    def metadata(self, object_name: str) -> Obj:
        meta: Obj = {"name": object_name, "namespace": self.namespace, "labels": self.labels()}
        if self.extra_annotations:
            meta["annotations"] = dict(self.extra_annotations)
        uid = (self.gateway.get("metadata") or {}).get("uid")
        # Offline renders have no UID; an ownerReference without one is invalid.
        if uid:
            meta["ownerReferences"] = [
                {
                    "apiVersion": wellknown.GATEWAY_API_VERSION,
                    "kind": "Gateway",
                    "name": self.name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        return meta


def _overlay(conf: settings.Settings, key: str, obj: Obj) -> Obj:
    patch = conf.overlay(key)
    if not patch:
        return obj
    merged = merge.merge(obj, patch)
    # Identity and ownership are not for overlays to change.
    for field in ("apiVersion", "kind"):
        merged[field] = obj[field]
    for field in ("name", "namespace", "ownerReferences"):
        if field in obj["metadata"]:
            merged["metadata"][field] = obj["metadata"][field]
    merged["metadata"]["labels"].update(obj["metadata"]["labels"])
    return merged


def service_account(base: _Base) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": base.metadata(base.names.service_account),
        # Envoy runs on a static bootstrap and never calls the API server.
        "automountServiceAccountToken": False,
    }


def config_files(
    bootstrap_yaml: str, options: envoy_options.BootstrapOptions, *, sds: bool = True
) -> dict[str, str]:
    """The ConfigMap's files: the bootstrap, and the file-based SDS configs it points at
    (which name the PEM files of ``cert_dir``; see ``waypoint.envoy.secrets``) unless ``sds``
    is False (a waypoint without certificates)."""
    files = {constants.CONFIG_KEY: bootstrap_yaml}
    if sds and not options.sds_over_ads:
        files.update(secrets.sds_files(options))
    return files


def config_map(base: _Base, files: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": base.metadata(base.names.config_map),
        "data": dict(files),
    }


def extauthz_config_map(base: _Base, sidecar: extauthz.Sidecar) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": base.metadata(base.names.extauthz_config_map),
        "data": {constants.EXTAUTHZ_CONFIG_KEY: sidecar.config_yaml},
    }


def service(base: _Base, options: envoy_options.BootstrapOptions) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": base.metadata(base.names.service),
        "spec": {
            "type": "ClusterIP",
            "selector": base.selector(),
            "ports": [*_front_ports(base, options), *_status_ports(options)],
        },
    }


def _front_ports(base: _Base, options: envoy_options.BootstrapOptions) -> list[Obj]:
    """Where ztunnel connects. Behind the sandwich, 15008 stays listed: istiod hands ztunnel
    the waypoint with HBONE port 15008, which the ztunnel capturing the pod terminates."""
    mesh = _service_port("mesh", options.hbone_port, "hbone")
    if base.proxy_port is None:
        return [mesh]
    return [mesh, _service_port("proxy", base.proxy_port, None)]


def _status_ports(options: envoy_options.BootstrapOptions) -> list[Obj]:
    return [
        _service_port("status-port", options.readiness_port, None),
        _service_port("http-envoy-prom", options.stats_port, None),
    ]


def _service_port(name: str, port: int, app_protocol: str | None) -> Obj:
    entry: Obj = {"name": name, "port": port, "protocol": "TCP", "targetPort": port}
    if app_protocol:
        entry["appProtocol"] = app_protocol
    return entry


def autoscaler(base: _Base, conf: settings.Settings) -> Obj:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": base.metadata(base.names.autoscaler),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": base.names.deployment,
            },
            "minReplicas": conf.min_replicas,
            "maxReplicas": conf.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": conf.cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def disruption_budget(base: _Base) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": base.metadata(base.names.disruption_budget),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": base.selector()}},
    }


def deployment(
    base: _Base,
    conf: settings.Settings,
    options: envoy_options.BootstrapOptions,
    files: dict[str, str],
    sidecar: extauthz.Sidecar | None = None,
) -> Obj:
    spec: Obj = {
        "selector": {"matchLabels": base.selector()},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "template": _pod_template(base, conf, options, files, sidecar),
    }
    # With an HPA the replica count belongs to it; setting it here would fight the autoscaler.
    if not conf.autoscaling:
        spec["replicas"] = conf.min_replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": base.metadata(base.names.deployment),
        "spec": spec,
    }


def _pod_template(
    base: _Base,
    conf: settings.Settings,
    options: envoy_options.BootstrapOptions,
    files: dict[str, str],
    sidecar: extauthz.Sidecar | None,
) -> Obj:
    containers = [_envoy_container(conf, options, base.proxy_port)]
    sds_names = sorted(name for name in files if name != constants.CONFIG_KEY)
    volumes = [
        _config_volume("config", base, [constants.CONFIG_KEY]),
        {"name": "tmp", "emptyDir": {}},
    ]
    if base.proxy_port is None:
        volumes.insert(1, _cert_volume(base, conf))
    if sds_names:
        volumes.insert(1, _config_volume("sds", base, sds_names))
        containers[0]["volumeMounts"].insert(
            1, {"name": "sds", "mountPath": secrets.sds_dir(options), "readOnly": True}
        )
    if sidecar is not None:
        containers.append(_extauthz_container(conf, sidecar))
        volumes += _extauthz_volumes(base, sidecar)
    init_containers: list[Obj] = []
    # Behind the sandwich ztunnel holds the certificate: nothing to fetch, whatever certSource says.
    if conf.cert_source is settings.CertSource.ISTIO and base.proxy_port is None:
        init_containers.append(_istio_certs_container(conf, options, once=True))
        containers.append(_istio_certs_container(conf, options, once=False))
        volumes += _istio_ca_volumes(conf)
    pod_spec: Obj = {
        "serviceAccountName": base.names.service_account,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "fsGroup": PROXY_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    pod_spec["containers"] = containers
    pod_spec["volumes"] = volumes
    return {
        "metadata": {
            "labels": {**base.labels(), wellknown.DATAPLANE_MODE_LABEL: _dataplane_mode(base)},
            "annotations": {
                **base.extra_annotations,
                constants.CONFIG_HASH_ANNOTATION: config_hash(pod_inputs(files, sidecar)),
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(options.stats_port),
                "prometheus.io/path": "/stats/prometheus",
            },
        },
        "spec": pod_spec,
    }


def _dataplane_mode(base: _Base) -> str:
    """Out of the mesh when we terminate HBONE ourselves; in it behind the sandwich."""
    return "none" if base.proxy_port is None else wellknown.DATAPLANE_MODE_AMBIENT


def _config_volume(name: str, base: _Base, keys: list[str]) -> Obj:
    items = [{"key": key, "path": key} for key in keys]
    return {"name": name, "configMap": {"name": base.names.config_map, "items": items}}


def _container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _envoy_container(
    conf: settings.Settings, options: envoy_options.BootstrapOptions, proxy_port: int | None
) -> Obj:
    ready = {"httpGet": {"path": "/healthz/ready", "port": options.readiness_port}}
    front = {"name": "hbone", "containerPort": options.hbone_port, "protocol": "TCP"}
    if proxy_port is not None:
        front = {"name": "proxy", "containerPort": proxy_port, "protocol": "TCP"}
    mounts: list[Obj] = [
        {"name": "config", "mountPath": constants.CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if proxy_port is None:
        mounts.insert(1, {"name": CERT_VOLUME, "mountPath": options.cert_dir, "readOnly": True})
    return {
        "name": "envoy",
        "image": conf.envoy_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["envoy"],
        "args": [
            "-c",
            f"{constants.CONFIG_MOUNT}/{constants.CONFIG_KEY}",
            "--log-level",
            conf.envoy_log_level,
            "--drain-time-s",
            "20",
        ],
        "ports": [
            front,
            {"name": "status-port", "containerPort": options.readiness_port, "protocol": "TCP"},
            {"name": "http-envoy-prom", "containerPort": options.stats_port, "protocol": "TCP"},
        ],
        "readinessProbe": {**ready, "periodSeconds": 2, "failureThreshold": 3},
        "startupProbe": {**ready, "periodSeconds": 1, "failureThreshold": 60},
        # Let endpoints drop the pod before Envoy stops accepting, for zero-downtime rollouts.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }


def _extauthz_container(conf: settings.Settings, sidecar: extauthz.Sidecar) -> Obj:
    port = constants.EXTAUTHZ_HEALTH_PORT
    container: Obj = {
        "name": "extauthz",
        "image": conf.extauthz_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["extauthz"],
        "args": [
            "serve",
            "--config",
            f"{constants.EXTAUTHZ_CONFIG_MOUNT}/{constants.EXTAUTHZ_CONFIG_KEY}",
        ],
        "ports": [{"name": "extauthz-health", "containerPort": port, "protocol": "TCP"}],
        # /readyz answers once the policy compiled and JWKS loaded; Envoy fails closed before.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": port},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [
            {
                "name": "extauthz-config",
                "mountPath": constants.EXTAUTHZ_CONFIG_MOUNT,
                "readOnly": True,
            },
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if sidecar.policy_config_map:
        mount = {"name": "extauthz-policy", "mountPath": constants.EXTAUTHZ_POLICY_MOUNT}
        container["volumeMounts"].insert(1, {**mount, "readOnly": True})
    return container


def _extauthz_volumes(base: _Base, sidecar: extauthz.Sidecar) -> list[Obj]:
    config_key = constants.EXTAUTHZ_CONFIG_KEY
    volumes: list[Obj] = [
        {
            "name": "extauthz-config",
            "configMap": {
                "name": base.names.extauthz_config_map,
                "items": [{"key": config_key, "path": config_key}],
            },
        },
    ]
    if sidecar.policy_config_map:
        items = [{"key": key, "path": key} for key in sidecar.policy_keys]
        volumes.append(
            {
                "name": "extauthz-policy",
                "configMap": {"name": sidecar.policy_config_map, "items": items},
            }
        )
    return volumes


def _cert_volume(base: _Base, conf: settings.Settings) -> Obj:
    if conf.cert_source is settings.CertSource.ISTIO:
        # Written by the istio-certs containers; in memory, so the key never hits a disk.
        return {"name": CERT_VOLUME, "emptyDir": {"medium": "Memory"}}
    if conf.cert_source is settings.CertSource.SECRET:
        # A cert-manager Certificate writes tls.crt/tls.key/ca.crt; Envoy wants Istio's names.
        # Projected keys (unlike subPath mounts) are updated in place on rotation.
        return {
            "name": CERT_VOLUME,
            "secret": {
                "secretName": conf.cert_secret_name(base.name),
                "items": [
                    {"key": "tls.crt", "path": "cert-chain.pem"},
                    {"key": "tls.key", "path": "key.pem"},
                    {"key": "ca.crt", "path": "root-cert.pem"},
                ],
            },
        }
    return {
        "name": CERT_VOLUME,
        "csi": {
            "driver": CSI_DRIVER,
            "readOnly": True,
            "volumeAttributes": {"spiffe.csi.cert-manager.io/fs-group": str(PROXY_UID)},
        },
    }


def _istio_certs_container(
    conf: settings.Settings, options: envoy_options.BootstrapOptions, *, once: bool
) -> Obj:
    """``waypoint istio-certs``: with ``once`` the init container, else the renewing sidecar.

    Istio's own waypoint template (istio-discovery files/waypoint.yaml) mounts the same
    projected token and root ConfigMap at the same paths and sets CA_ADDR the same way.
    """
    args = [
        "istio-certs",
        "--ca-address",
        conf.ca_address,
        "--cluster-id",
        conf.cluster_id,
        "--trust-domain",
        options.trust_domain,
        "--cert-dir",
        options.cert_dir,
        "--root-cert",
        f"{ISTIO_CA_ROOT_MOUNT}/root-cert.pem",
        "--token",
        f"{ISTIO_TOKEN_MOUNT}/{ISTIO_TOKEN_PATH}",
    ]
    container: Obj = {
        "name": "istio-certs-init" if once else "istio-certs",
        "image": conf.istio_certs_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["waypoint"],
        "args": [*args, "--once"]
        if once
        else [*args, "--metrics-port", str(ISTIO_CERTS_METRICS_PORT)],
        "env": [
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"memory": "128Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": CERT_VOLUME, "mountPath": options.cert_dir},
            {"name": ISTIO_TOKEN_VOLUME, "mountPath": ISTIO_TOKEN_MOUNT, "readOnly": True},
            {"name": ISTIO_CA_ROOT_VOLUME, "mountPath": ISTIO_CA_ROOT_MOUNT, "readOnly": True},
        ],
    }
    if not once:
        container["ports"] = [
            {
                "name": "ca-metrics",
                "containerPort": ISTIO_CERTS_METRICS_PORT,
                "protocol": "TCP",
            }
        ]
    return container


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _istio_ca_volumes(conf: settings.Settings) -> list[Obj]:
    token = {
        "serviceAccountToken": {
            "audience": ISTIO_CA_AUDIENCE,
            "expirationSeconds": ISTIO_TOKEN_EXPIRATION,
            "path": ISTIO_TOKEN_PATH,
        }
    }
    return [
        {"name": ISTIO_TOKEN_VOLUME, "projected": {"sources": [token]}},
        {"name": ISTIO_CA_ROOT_VOLUME, "configMap": {"name": conf.ca_root_config_map}},
    ]

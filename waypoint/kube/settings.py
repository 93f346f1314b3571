"""Per-waypoint deployment settings: defaults, then the parametersRef ConfigMap, then annotations.

Istio 1.26+ lets a Gateway point ``spec.infrastructure.parametersRef`` at a ConfigMap; we read
the same thing, and a GatewayClass ``spec.parametersRef`` ConfigMap gives class-wide defaults
(the manifests/ overlays use it to add an OPA sidecar or switch the certificate source). Simple knobs are ConfigMap keys (``minReplicas``) or Gateway annotations
(``waypoint.dev/min-replicas``), annotations winning. The ConfigMap may also carry Istio-style
overlays (``deployment``, ``service``, ``serviceAccount``, ``horizontalPodAutoscaler``,
``podDisruptionBudget``), YAML merged into the generated object (see ``waypoint.kube.merge``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from waypoint import version
from waypoint.kube import merge

OVERLAY_KEYS = (
    "serviceAccount",
    "deployment",
    "service",
    "horizontalPodAutoscaler",
    "podDisruptionBudget",
)


class SettingsError(ValueError):
    """A setting has a value the controller cannot use; the message names its source."""


class CertSource(enum.Enum):
    """Where the waypoint's SPIFFE certificate comes from (see docs/controller.md)."""

    CSI = "csi"  # cert-manager csi-driver-spiffe: per-pod certificate, rotated in place
    SECRET = "secret"  # a Secret with tls.crt / tls.key / ca.crt (cert-manager Certificate)
    ISTIO = "istio"  # istiod's CA, via the ``waypoint istio-certs`` init container + sidecar


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything about a waypoint's workload that is not its Envoy config."""

    # One image plays both parts (its command picks the role); each can still be overridden.
    envoy_image: str = dataclasses.field(default_factory=version.default_image)
    extauthz_image: str = dataclasses.field(default_factory=version.default_image)
    extauthz: bool = True
    autoscaling: bool = True
    min_replicas: int = 1
    max_replicas: int = 5
    cpu_utilization: int = 80
    # A Secret works on any cluster; csi needs the csi-driver-spiffe add-on (docs/install.md).
    cert_source: CertSource = CertSource.SECRET
    cert_secret: str = ""  # empty: "<gateway>-spiffe"
    # certSource istio: where istiod's CA is, the cluster ID it expects, the ConfigMap of the
    # mesh root (istiod writes it into every namespace), and the image with `waypoint`.
    ca_address: str = "istiod.istio-system.svc:15012"
    cluster_id: str = "Kubernetes"
    ca_root_config_map: str = "istio-ca-root-cert"
    istio_certs_image: str = dataclasses.field(default_factory=version.default_image)
    # The user's ConfigMap of Rego modules for the extauthz sidecar; empty: "<gateway>-extauthz-policy".
    extauthz_policy_config_map: str = ""
    # Set: extauthz asks this OPA (Data API) for decisions instead of running your Rego itself.
    extauthz_opa_url: str = ""
    envoy_log_level: str = "warning"
    overlays: tuple[tuple[str, str], ...] = ()  # (kind key, YAML text), least specific first

    def cert_secret_name(self, gateway_name: str) -> str:
        """The Secret a ``secret`` certificate source mounts: ``certSecretName`` or ``<gateway>-spiffe``."""
        return self.cert_secret or f"{gateway_name}-spiffe"

    def overlay(self, key: str) -> dict[str, Any]:
        """The merged overlay for one kind: GatewayClass defaults first, then the Gateway's."""
        result: dict[str, Any] = {}
        for name, text in self.overlays:
            loaded = yaml.safe_load(text) if name == key else None
            if isinstance(loaded, Mapping):
                result = merge.merge(result, loaded)
        return result


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _percent(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise ValueError("must be between 1 and 100")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _http_url(text: str) -> str:
    value = _text(text)
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _host_port(text: str) -> str:
    value = _text(text)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT")
    return value


@dataclasses.dataclass(frozen=True)
class _Knob:
    field: str
    config_key: str
    annotation: str
    parse: Callable[[str], object]


KNOBS = (
    _Knob("min_replicas", "minReplicas", "waypoint.dev/min-replicas", _positive_int),
    _Knob("max_replicas", "maxReplicas", "waypoint.dev/max-replicas", _positive_int),
    _Knob("cpu_utilization", "targetCPUUtilizationPercentage", "waypoint.dev/cpu-target", _percent),
    _Knob("autoscaling", "autoscaling", "waypoint.dev/autoscaling", _boolean),
    _Knob("extauthz", "extauthz", "waypoint.dev/extauthz", _boolean),
    _Knob("envoy_image", "envoyImage", "waypoint.dev/envoy-image", _text),
    _Knob("extauthz_image", "extauthzImage", "waypoint.dev/extauthz-image", _text),
    _Knob("cert_source", "certSource", "waypoint.dev/cert-source", CertSource),
    _Knob("cert_secret", "certSecretName", "waypoint.dev/cert-secret", _text),
    _Knob("ca_address", "caAddress", "waypoint.dev/ca-address", _host_port),
    _Knob("cluster_id", "clusterID", "waypoint.dev/cluster-id", _text),
    _Knob("ca_root_config_map", "caRootConfigMap", "waypoint.dev/ca-root-configmap", _text),
    _Knob("istio_certs_image", "istioCertsImage", "waypoint.dev/istio-certs-image", _text),
    _Knob(
        "extauthz_policy_config_map",
        "extauthzPolicyConfigMap",
        "waypoint.dev/extauthz-policy-configmap",
        _text,
    ),
    _Knob("extauthz_opa_url", "extauthzOpaURL", "waypoint.dev/extauthz-opa-url", _http_url),
    _Knob("envoy_log_level", "envoyLogLevel", "waypoint.dev/envoy-log-level", _text),
)


def _where(gateway: Mapping[str, Any]) -> str:
    meta = gateway.get("metadata") or {}
    if gateway.get("kind") == "GatewayClass":
        return f"GatewayClass {meta.get('name', '')}"
    return f"Gateway {meta.get('namespace', '')}/{meta.get('name', '')}"


def parameters_ref(gateway: Mapping[str, Any]) -> str | None:
    """The name of the Gateway's parametersRef ConfigMap, or None; other kinds are an error."""
    ref = ((gateway.get("spec") or {}).get("infrastructure") or {}).get("parametersRef")
    if not ref:
        return None
    if ref.get("kind") != "ConfigMap" or ref.get("group", "") not in ("", "core"):
        raise SettingsError(
            f"{_where(gateway)}: spec.infrastructure.parametersRef must name a core ConfigMap, "
            f"not {ref.get('group', '')}/{ref.get('kind')}"
        )
    return str(ref["name"])


def class_parameters_ref(gateway_class: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the GatewayClass's parametersRef ConfigMap (class-wide defaults)."""
    ref = (gateway_class.get("spec") or {}).get("parametersRef")
    if not ref:
        return None
    name = (gateway_class.get("metadata") or {}).get("name", "")
    if ref.get("kind") != "ConfigMap" or ref.get("group", "") not in ("", "core"):
        raise SettingsError(
            f"GatewayClass {name}: spec.parametersRef must name a core ConfigMap, "
            f"not {ref.get('group', '')}/{ref.get('kind')}"
        )
    if not ref.get("namespace"):
        raise SettingsError(f"GatewayClass {name}: spec.parametersRef needs a namespace")
    return str(ref["namespace"]), str(ref["name"])


def check_class_config(
    gateway_class: Mapping[str, Any], config_map: Mapping[str, Any], defaults: Settings | None
) -> None:
    """Raise SettingsError, naming the GatewayClass, when its parametersRef ConfigMap holds a
    value no Gateway could use (the class's own status reports it)."""
    name = (gateway_class.get("metadata") or {}).get("name", "")
    # Only the ConfigMap is checked: a GatewayClass's own annotations are no settings layer.
    resolve({"kind": "GatewayClass", "metadata": {"name": name}}, None, defaults, config_map)


def referenced_config_maps(
    gateway: Mapping[str, Any], gateway_class: Mapping[str, Any] | None
) -> set[tuple[str, str]]:
    """(namespace, name) of every parametersRef ConfigMap the Gateway's settings read: its
    own and its GatewayClass's. Invalid references name nothing (status reports them)."""
    found: set[tuple[str, str]] = set()
    namespace = str((gateway.get("metadata") or {}).get("namespace") or "")
    try:
        own = parameters_ref(gateway)
        if own:
            found.add((namespace, own))
    except SettingsError:
        pass
    try:
        klass = class_parameters_ref(gateway_class) if gateway_class else None
        if klass:
            found.add(klass)
    except SettingsError:
        pass
    return found


def resolve(
    gateway: Mapping[str, Any],
    config_map: Mapping[str, Any] | None = None,
    defaults: Settings | None = None,
    class_config_map: Mapping[str, Any] | None = None,
) -> Settings:
    """The settings for ``gateway``, from least to most specific: ``defaults``, the
    GatewayClass's parametersRef ConfigMap, the Gateway's own parametersRef ConfigMap, and
    the Gateway's annotations."""
    changes: dict[str, object] = {}
    overlays: list[tuple[str, str]] = []
    for source in (class_config_map, config_map):
        if source is None:
            continue
        data: Mapping[str, str] = source.get("data") or {}
        cm_name = (source.get("metadata") or {}).get("name", "")
        for knob in KNOBS:
            if knob.config_key in data:
                where = f"ConfigMap {cm_name} key {knob.config_key}"
                changes[knob.field] = _parse(knob, data[knob.config_key], where, gateway)
        overlays.extend(_overlays(data, cm_name, gateway))
    annotations = (gateway.get("metadata") or {}).get("annotations") or {}
    for knob in KNOBS:
        if knob.annotation in annotations:
            where = f"annotation {knob.annotation}"
            changes[knob.field] = _parse(knob, annotations[knob.annotation], where, gateway)
    changes["overlays"] = tuple(overlays)
    settings = dataclasses.replace(defaults or Settings(), **changes)  # type: ignore[arg-type]
    if settings.max_replicas < settings.min_replicas:
        raise SettingsError(
            f"{_where(gateway)}: max replicas ({settings.max_replicas}) is below min replicas "
            f"({settings.min_replicas})"
        )
    return settings


def _parse(knob: _Knob, raw: object, source: str, gateway: Mapping[str, Any]) -> object:
    try:
        return knob.parse(str(raw))
    except ValueError as exc:
        raise SettingsError(f"{_where(gateway)}: {source}={raw!r}: {exc}") from None


def _overlays(
    data: Mapping[str, str], cm_name: str, gateway: Mapping[str, Any]
) -> tuple[tuple[str, str], ...]:
    found = []
    for key in OVERLAY_KEYS:
        if key not in data:
            continue
        try:
            loaded = yaml.safe_load(data[key])
        except yaml.YAMLError as exc:
            raise SettingsError(
                f"{_where(gateway)}: ConfigMap {cm_name} key {key}: {exc}"
            ) from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise SettingsError(
                f"{_where(gateway)}: ConfigMap {cm_name} key {key} must hold a YAML mapping"
            )
        found.append((key, data[key]))
    return tuple(found)

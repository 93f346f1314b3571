"""The waypoint Gateway: generating one (``waypoint generate``/``apply``) and reading one back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from waypoint import names, wellknown
from waypoint.kube import constants

TRAFFIC_TYPES = ("service", "workload", "all", "none")


def generate_gateway(
    namespace: str,
    name: str = "waypoint",
    traffic_type: str = "service",
    service_account: str | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """The Gateway ``waypoint apply`` writes: class ``waypoint``, listener ``mesh`` 15008 HBONE.

    ``revision`` labels it ``istio.io/rev``, as ``istioctl waypoint apply --revision`` does.
    """
    names.names_for(namespace, name)
    if traffic_type not in TRAFFIC_TYPES:
        raise ValueError(f"--for must be one of {', '.join(TRAFFIC_TYPES)}, not {traffic_type!r}")
    if min_replicas is not None and max_replicas is not None and max_replicas < min_replicas:
        raise ValueError(f"--max-replicas {max_replicas} is below --min-replicas {min_replicas}")
    annotations: dict[str, str] = {}
    if service_account:
        annotations[wellknown.FOR_SERVICE_ACCOUNT] = service_account
    if min_replicas is not None:
        annotations["waypoint.dev/min-replicas"] = str(min_replicas)
    if max_replicas is not None:
        annotations["waypoint.dev/max-replicas"] = str(max_replicas)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {wellknown.WAYPOINT_FOR: traffic_type},
    }
    if revision:
        metadata["labels"][constants.REVISION] = revision
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": wellknown.GATEWAY_API_VERSION,
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {
            "gatewayClassName": wellknown.GATEWAY_CLASS,
            "listeners": [
                {
                    "name": wellknown.LISTENER_NAME,
                    "port": wellknown.HBONE_PORT,
                    "protocol": wellknown.HBONE_PROTOCOL,
                }
            ],
        },
    }


def revision_of(gw: Mapping[str, Any]) -> str:
    """The control-plane revision a Gateway names (label ``istio.io/rev``); "" for the default."""
    labels = (gw.get("metadata") or {}).get("labels") or {}
    value = str(labels.get(constants.REVISION) or "")
    return "" if value == "default" else value


def managed_by(gw: Mapping[str, Any], revision: str) -> bool:
    """A controller of ``revision`` ("" or "default": the default one) manages the Gateway
    when the Gateway names that revision, as istiod revisions split their objects."""
    return revision_of(gw) == ("" if revision == "default" else revision)


def is_waypoint(obj: Mapping[str, Any]) -> bool:
    """A Gateway of our class."""
    return (
        obj.get("kind") == "Gateway"
        and str(obj.get("apiVersion", "")).startswith(wellknown.GATEWAY_API_GROUP + "/")
        and (obj.get("spec") or {}).get("gatewayClassName") == wellknown.GATEWAY_CLASS
    )


def key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def traffic_type(gateway: Mapping[str, Any]) -> str:
    labels = (gateway.get("metadata") or {}).get("labels") or {}
    return str(labels.get(wellknown.WAYPOINT_FOR, "service"))


def service_account(gateway: Mapping[str, Any]) -> str | None:
    annotations = (gateway.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(wellknown.FOR_SERVICE_ACCOUNT)
    return str(value) if value else None


def observed_marker(gateway: Mapping[str, Any]) -> str:
    """``(metadata <digest>)``: a digest of the Gateway's labels and annotations, where its
    settings live. A change to them does not move ``metadata.generation`` (a custom resource's
    generation follows its spec only), so the controller ends its ``Accepted`` message with
    the marker of the Gateway it judged, and ``--wait`` compares it with the applied one."""
    meta = gateway.get("metadata") or {}
    inputs = {"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {}}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return f"(metadata {digest})"


def _front_listener(listener: Any) -> bool:
    if not isinstance(listener, Mapping):
        return False
    if listener.get("protocol") == wellknown.PROXY_PROTOCOL:
        return True
    return (
        listener.get("protocol") == wellknown.HBONE_PROTOCOL
        and listener.get("port") == wellknown.HBONE_PORT
    )


def problems(gateway: Mapping[str, Any]) -> list[str]:
    """Why the Gateway cannot be accepted as a waypoint; empty when it can."""
    namespace, name = key(gateway)
    found: list[str] = []
    try:
        names.names_for(namespace, name)
    except names.InvalidName as exc:
        found.append(str(exc))
    listeners = (gateway.get("spec") or {}).get("listeners") or []
    if not any(_front_listener(listener) for listener in listeners):
        found.append(
            f"Gateway {namespace}/{name}: needs a listener with protocol "
            f"{wellknown.HBONE_PROTOCOL} on port {wellknown.HBONE_PORT}, or one with protocol "
            f"{wellknown.PROXY_PROTOCOL} (behind ztunnel's sandwich)"
        )
    if traffic_type(gateway) not in TRAFFIC_TYPES:
        found.append(
            f"Gateway {namespace}/{name}: label {wellknown.WAYPOINT_FOR}="
            f"{traffic_type(gateway)!r} is not one of {', '.join(TRAFFIC_TYPES)}"
        )
    return found

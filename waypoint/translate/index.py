"""The input world, indexed: the objects translation reads, by kind, namespace and name.

Only the kinds translation understands are kept (Namespace, Service, Pod, EndpointSlice,
GatewayClass, Gateway, HTTPRoute, GRPCRoute); everything else (Deployments, ServiceAccounts, ...) is ignored
without a word. An object whose metadata cannot be read gets an ``Accepted: False`` status
and is left out. If the same object appears twice, one copy is kept by a fixed rule (the
smallest canonical JSON), so the result never depends on input order.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

from waypoint import model, wellknown
from waypoint.translate import fields, status

NAME_LABEL = "kubernetes.io/metadata.name"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

NAMESPACED = {
    (wellknown.CORE_GROUP, "Service"),
    (wellknown.CORE_GROUP, "Pod"),
    (wellknown.DISCOVERY_GROUP, "EndpointSlice"),
    (wellknown.GATEWAY_API_GROUP, "Gateway"),
    (wellknown.GATEWAY_API_GROUP, "HTTPRoute"),
    (wellknown.GATEWAY_API_GROUP, "GRPCRoute"),
}
KINDS = NAMESPACED | {
    (wellknown.CORE_GROUP, "Namespace"),
    (wellknown.GATEWAY_API_GROUP, "GatewayClass"),
}


@dataclasses.dataclass(frozen=True)
class Obj:
    """One input object with its metadata read and checked."""

    group: str
    kind: str
    namespace: str  # "" for Namespaces and GatewayClasses
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    created: datetime.datetime | None
    raw: Mapping[str, Any]

    @property
    def ref(self) -> model.ObjectRef:
        return model.ObjectRef(self.group, self.kind, self.namespace, self.name)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def field(self, name: str) -> Any:
        return self.raw.get(name)


def group_of(api_version: Any) -> str:
    text = str(api_version or "")
    return text.rpartition("/")[0] if "/" in text else wellknown.CORE_GROUP


def _plain(value: Any) -> Any:
    # YAML allows non-string keys; json.dumps(sort_keys=True) cannot compare int with str.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _canonical(raw: Any) -> str:
    return json.dumps(_plain(raw), sort_keys=True, default=str)


class Index:
    """Objects by kind and (namespace, name), each map iterated in sorted key order."""

    def __init__(self, objects: Iterable[Mapping[str, Any]], book: status.Book) -> None:
        found: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {kind: {} for kind in KINDS}
        unreadable: list[tuple[str, model.ObjectRef, model.Condition]] = []
        for raw in objects:
            obj = _read(raw, unreadable)
            if obj is None:
                continue
            table = found[(obj.group, obj.kind)]
            other = table.get(obj.key)
            if other is None or _canonical(obj.raw) < _canonical(other.raw):
                table[obj.key] = obj

        # Sorted, so that two broken copies of one object report in the same order every time.
        for _canon, ref, cond in sorted(unreadable, key=lambda item: item[0]):
            book.add(ref, cond)

        def kind(group: str, name: str) -> dict[tuple[str, str], Obj]:
            return dict(sorted(found[(group, name)].items()))

        self.namespaces = {
            key[1]: obj for key, obj in kind(wellknown.CORE_GROUP, "Namespace").items()
        }
        # A waypoint's own Service (the controller generates it) is not a destination: as
        # istiod leaves out gateway.istio.io/managed Services, a waypoint never serves itself.
        self.services = {
            key: obj
            for key, obj in kind(wellknown.CORE_GROUP, "Service").items()
            if not generated(obj.labels)
        }
        self.pods = kind(wellknown.CORE_GROUP, "Pod")
        self.slices = kind(wellknown.DISCOVERY_GROUP, "EndpointSlice")
        self.gateway_classes = {
            key[1]: obj for key, obj in kind(wellknown.GATEWAY_API_GROUP, "GatewayClass").items()
        }
        self.gateways = kind(wellknown.GATEWAY_API_GROUP, "Gateway")
        self.http_routes = kind(wellknown.GATEWAY_API_GROUP, "HTTPRoute")
        self.grpc_routes = kind(wellknown.GATEWAY_API_GROUP, "GRPCRoute")

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        """A namespace's labels, with the one Kubernetes always sets (selectors may use it)."""
        obj = self.namespaces.get(namespace)
        labels = dict(obj.labels) if obj else {}
        labels[NAME_LABEL] = namespace
        return labels


def _read(raw: Any, unreadable: list[tuple[str, model.ObjectRef, model.Condition]]) -> Obj | None:
    if not fields.is_mapping(raw):
        return None
    group, kind = group_of(raw.get("apiVersion")), raw.get("kind")
    if not isinstance(kind, str) or (group, kind) not in KINDS:
        return None
    meta_raw = raw.get("metadata")
    readable = meta_raw if fields.is_mapping(meta_raw) else {}
    name = readable.get("name")
    namespaced = (group, kind) in NAMESPACED
    namespace = readable.get("namespace")
    namespace = namespace if isinstance(namespace, str) and namespace else "default"
    ref = model.ObjectRef(group, kind, namespace if namespaced else "", str(name or ""))
    try:
        meta = fields.mapping(meta_raw, "metadata", required=True)
        fields.nonempty(meta.get("name"), "metadata.name")
        labels = fields.string_map(meta.get("labels"), "metadata.labels")
        annotations = fields.string_map(meta.get("annotations"), "metadata.annotations")
    except fields.Bad as exc:
        cond = status.fail(status.ACCEPTED, status.R_INVALID, str(exc))
        unreadable.append((_canonical(raw), ref, cond))
        return None
    return Obj(
        group=group,
        kind=kind,
        namespace=ref.namespace,
        name=ref.name,
        labels=labels,
        annotations=annotations,
        created=fields.timestamp(meta.get("creationTimestamp")),
        raw=raw,
    )


def generated(labels: Mapping[str, str]) -> bool:
    """Labels of an object the controller generated for a waypoint (never an input)."""
    return labels.get(wellknown.MANAGED_BY_LABEL) == wellknown.MANAGED_BY_VALUE

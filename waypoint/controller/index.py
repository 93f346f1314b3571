"""Which waypoint Gateways an object change affects, so that only those are reconciled.

A change to an object in namespace N can alter a waypoint through three links, and the index
follows each:

- **Namespace.** Binding, routes, policies and parametersRefs are namespace-local by default:
  every waypoint Gateway in N is affected.
- **Labels.** ``istio.io/use-waypoint`` (with ``istio.io/use-waypoint-namespace``) on the object,
  before or after the change, or on N's Namespace, names a waypoint that may be elsewhere.
- **References.** Cross-namespace references in the object's spec (a route's parentRefs or
  backendRefs, a policy's targetRefs: any ``namespace`` field) add their namespaces; and the
  last translation says which waypoints read N at all (they serve or route to a Service in N),
  so an EndpointSlice or Pod in N reaches a waypoint in another namespace that routes there.

The GatewayClass is mesh-wide: it affects every waypoint, and callers handle it themselves, as
they do ConfigMaps (a parametersRef names its readers).
The result is a superset of the truly affected Gateways; a reconcile of an unaffected one reads
its Gateway, finds nothing to change and writes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from waypoint import model, wellknown
from waypoint.kube import gateway

Obj = Mapping[str, Any]
GatewayKey = tuple[str, str]


class Index:
    """Waypoint Gateways by namespace, Namespace labels, and what each waypoint last read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gateways: dict[str, set[str]] = {}
        self._namespace_labels: dict[str, dict[str, str]] = {}
        self._readers: dict[str, set[GatewayKey]] = {}

    # --- keeping it current ----------------------------------------------------------------

    def gateway_changed(self, before: Obj | None, after: Obj | None) -> None:
        with self._lock:
            for obj in (before, after):
                if obj is not None:
                    namespace, name = gateway.key(obj)
                    self._gateways.get(namespace, set()).discard(name)
            if after is not None and gateway.is_waypoint(after):
                namespace, name = gateway.key(after)
                self._gateways.setdefault(namespace, set()).add(name)

    def namespace_changed(self, before: Obj | None, after: Obj | None) -> None:
        obj = after or before or {}
        name = str((obj.get("metadata") or {}).get("name") or "")
        with self._lock:
            if after is None:
                self._namespace_labels.pop(name, None)
            else:
                self._namespace_labels[name] = _labels(after)

    def learn(self, translation: model.Translation) -> None:
        """Remember which namespaces each translated waypoint reads (serves or routes to)."""
        readers: dict[str, set[GatewayKey]] = {}
        for waypoint in translation.waypoints:
            key = (waypoint.namespace, waypoint.name)
            namespaces = {waypoint.namespace}
            namespaces.update(destination.namespace for destination in waypoint.destinations)
            namespaces.update(cluster.namespace for cluster in waypoint.clusters)
            for namespace in namespaces:
                readers.setdefault(namespace, set()).add(key)
        with self._lock:
            self._readers = readers

    # --- asking it -------------------------------------------------------------------------

    def gateways(self) -> list[GatewayKey]:
        with self._lock:
            return sorted((ns, name) for ns, names in self._gateways.items() for name in names)

    def in_namespace(self, namespace: str) -> list[GatewayKey]:
        with self._lock:
            return sorted((namespace, name) for name in self._gateways.get(namespace, ()))

    def affected(self, before: Obj | None, after: Obj | None) -> set[GatewayKey]:
        """The waypoint Gateways a change from ``before`` to ``after`` may affect."""
        namespaces: set[str] = set()
        named: set[GatewayKey] = set()
        for obj in (before, after):
            if obj is None:
                continue
            own = _own_namespace(obj)
            namespaces.add(own)
            namespaces.update(_referenced_namespaces(obj.get("spec")))
            named.update(_label_targets(_labels(obj), own))
        with self._lock:
            for namespace in sorted(namespaces):
                named.update(_label_targets(self._namespace_labels.get(namespace, {}), namespace))
            found = {
                (namespace, name)
                for namespace in namespaces
                for name in self._gateways.get(namespace, ())
            }
            for namespace in namespaces:
                found.update(self._readers.get(namespace, ()))
            found.update(key for key in named if key[1] in self._gateways.get(key[0], ()))
        return found


def _labels(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _own_namespace(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    if obj.get("kind") == "Namespace":
        return str(meta.get("name") or "")
    return str(meta.get("namespace") or "")


def _label_targets(labels: Mapping[str, str], own_namespace: str) -> set[GatewayKey]:
    name = labels.get(wellknown.USE_WAYPOINT)
    if not name or name == "none":
        return set()
    return {(labels.get(wellknown.USE_WAYPOINT_NAMESPACE) or own_namespace, name)}


def _referenced_namespaces(spec: Any) -> set[str]:
    """Every string under a ``namespace`` key anywhere in ``spec`` (parentRefs, backendRefs,
    targetRefs, mirror backends): an over-approximation that needs no per-kind knowledge."""
    found: set[str] = set()
    stack = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for key, value in item.items():
                if key == "namespace" and isinstance(value, str):
                    found.add(value)
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return found

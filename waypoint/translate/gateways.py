"""Waypoint Gateways: which Gateways are waypoints, and what each one admits and serves.

A waypoint is a Gateway of class ``waypoint`` with exactly one listener: ``mesh``, on port
15008 with protocol HBONE, as Istio defines it, or an ``istio.io/PROXY`` listener for Istio's
PROXY "sandwich" (see ``inbound``). Anything else about the listener gets ``Accepted: False``
(reason ``ListenersNotValid``) with a message naming the field, and the Gateway is left out.
Gateways of other classes belong to other controllers and are not judged.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from waypoint import model, names, wellknown
from waypoint.translate import fields, inbound, index, status

_SA_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclasses.dataclass(frozen=True)
class Expression:
    key: str
    operator: str
    values: tuple[str, ...]

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclasses.dataclass(frozen=True)
class AllowedNamespaces:
    """The ``mesh`` listener's ``allowedRoutes.namespaces``: who may bind from elsewhere."""

    source: str = "Same"  # Same | All | Selector
    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Expression, ...] = ()

    def admits(self, own_namespace: str, namespace: str, labels: Mapping[str, str]) -> bool:
        if self.source == "All":
            return True
        if self.source == "Same":
            return namespace == own_namespace
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            e.holds(labels) for e in self.expressions
        )


@dataclasses.dataclass(frozen=True)
class WaypointSpec:
    """An accepted waypoint Gateway, before anything is bound to it."""

    namespace: str
    name: str
    traffic_type: model.TrafficType
    service_account: str | None
    allowed: AllowedNamespaces
    ref: model.ObjectRef
    binding: inbound.Binding = inbound.HBONE

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def serves_services(self) -> bool:
        return self.traffic_type in (model.TrafficType.SERVICE, model.TrafficType.ALL)

    @property
    def serves_workloads(self) -> bool:
        return self.traffic_type in (model.TrafficType.WORKLOAD, model.TrafficType.ALL)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def waypoints(idx: index.Index, book: status.Book) -> dict[tuple[str, str], WaypointSpec]:
    """Every accepted waypoint by (namespace, name); rejected ones get a status and are left out."""
    found: dict[tuple[str, str], WaypointSpec] = {}
    for key, obj in idx.gateways.items():
        spec = obj.field("spec")
        if not isinstance(spec, Mapping) or spec.get("gatewayClassName") != wellknown.GATEWAY_CLASS:
            continue
        try:
            found[key] = _read(obj, spec, idx)
        except fields.Bad as exc:
            reason = exc.args[1] if len(exc.args) > 1 else status.R_INVALID
            book.add(obj.ref, status.fail(status.ACCEPTED, reason, str(exc.args[0])))
            continue
        kind = found[key].traffic_type
        what = "no" if kind is model.TrafficType.NONE else kind.value
        message = f"waypoint for {what} traffic" + _binding_message(found[key].binding)
        book.add(obj.ref, status.ok(status.ACCEPTED, status.R_ACCEPTED, message))
    return found


def rejection(idx: index.Index, key: tuple[str, str]) -> str:
    """Why there is no waypoint ``key``: missing, another class, or rejected (see its status)."""
    obj = idx.gateways.get(key)
    if obj is None:
        return f"no Gateway {key[0]}/{key[1]}"
    spec = obj.field("spec")
    if not isinstance(spec, Mapping) or spec.get("gatewayClassName") != wellknown.GATEWAY_CLASS:
        return f"Gateway {key[0]}/{key[1]} is not of class {wellknown.GATEWAY_CLASS}"
    return f"Gateway {key[0]}/{key[1]} is not an accepted waypoint (see its status)"


def _bad(message: str, reason: str) -> fields.Bad:
    return fields.Bad(message, reason)


def _binding_message(binding: inbound.Binding) -> str:
    if binding.proxy_port is None:
        return ""
    return f", behind ztunnel: PROXY protocol on port {binding.proxy_port}{binding.note}"


def _read(obj: index.Obj, spec: Mapping[str, Any], idx: index.Index) -> WaypointSpec:
    try:
        names.names_for(obj.namespace, obj.name)
    except names.InvalidName as exc:
        raise _bad(str(exc), status.R_INVALID) from None
    listener = _mesh_listener(spec)
    allowed = _allowed(listener)
    return WaypointSpec(
        namespace=obj.namespace,
        name=obj.name,
        traffic_type=_traffic_type(obj, idx),
        service_account=_scope(obj),
        allowed=allowed,
        ref=obj.ref,
        binding=inbound.binding(obj, idx, listener),
    )


def _mesh_listener(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        listeners = fields.seq(spec.get("listeners"), "spec.listeners", required=True)
    except fields.Bad as exc:
        raise _bad(str(exc), status.R_LISTENERS_NOT_VALID) from None
    if len(listeners) != 1:
        raise _bad(
            f"spec.listeners must hold exactly one listener ({wellknown.LISTENER_NAME}, port "
            f"{wellknown.HBONE_PORT}, protocol {wellknown.HBONE_PROTOCOL}), not {len(listeners)}",
            status.R_LISTENERS_NOT_VALID,
        )
    listener = listeners[0]
    if not isinstance(listener, Mapping):
        raise _bad("spec.listeners[0] must be a mapping", status.R_LISTENERS_NOT_VALID)
    if listener.get("protocol") == wellknown.PROXY_PROTOCOL:
        return _proxy_listener(listener)
    expected: tuple[tuple[str, object], ...] = (
        ("name", wellknown.LISTENER_NAME),
        ("port", wellknown.HBONE_PORT),
        ("protocol", wellknown.HBONE_PROTOCOL),
    )
    for field, want in expected:
        if listener.get(field) != want:
            raise _bad(
                f"spec.listeners[0].{field} must be {want!r}, not {listener.get(field)!r}",
                status.R_LISTENERS_NOT_VALID,
            )
    if listener.get("tls") is not None or listener.get("hostname") is not None:
        raise _bad(
            "spec.listeners[0]: an HBONE listener takes no tls or hostname",
            status.R_LISTENERS_NOT_VALID,
        )
    return listener


def _proxy_listener(listener: Mapping[str, Any]) -> Mapping[str, Any]:
    """kgateway's sandwich listener: any name, a port for ztunnel's PROXY connections."""
    port = listener.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _bad(
            f"spec.listeners[0].port must be a port number, not {port!r}",
            status.R_LISTENERS_NOT_VALID,
        )
    inbound.free_port(port, "spec.listeners[0].port", status.R_LISTENERS_NOT_VALID)
    if listener.get("tls") is not None or listener.get("hostname") is not None:
        raise _bad(
            f"spec.listeners[0]: a {wellknown.PROXY_PROTOCOL} listener takes no tls or hostname",
            status.R_LISTENERS_NOT_VALID,
        )
    return listener


def _allowed(listener: Mapping[str, Any]) -> AllowedNamespaces:
    path = "spec.listeners[0].allowedRoutes.namespaces"
    try:
        routes = fields.mapping(listener.get("allowedRoutes"), "spec.listeners[0].allowedRoutes")
        namespaces = fields.mapping(routes.get("namespaces"), path)
        source = fields.opt_string(namespaces.get("from"), f"{path}.from") or "Same"
        if source not in ("Same", "All", "Selector"):
            raise fields.Bad(f"{path}.from must be Same, All or Selector, not {source!r}")
        if source != "Selector":
            return AllowedNamespaces(source)
        selector = fields.mapping(namespaces.get("selector"), f"{path}.selector", required=True)
        labels = fields.string_map(selector.get("matchLabels"), f"{path}.selector.matchLabels")
        expressions = tuple(
            _expression(item, f"{path}.selector.matchExpressions[{i}]")
            for i, item in enumerate(
                fields.seq(selector.get("matchExpressions"), f"{path}.selector.matchExpressions")
            )
        )
    except fields.Bad as exc:
        raise _bad(str(exc), status.R_LISTENERS_NOT_VALID) from None
    if not labels and not expressions:
        raise _bad(
            f"{path}.selector selects nothing: give matchLabels or matchExpressions",
            status.R_LISTENERS_NOT_VALID,
        )
    return AllowedNamespaces(source, tuple(sorted(labels.items())), expressions)


def _expression(item: Any, path: str) -> Expression:
    expr = fields.mapping(item, path, required=True)
    key = fields.nonempty(expr.get("key"), f"{path}.key")
    operator = fields.string(expr.get("operator"), f"{path}.operator")
    if operator not in _OPERATORS:
        raise fields.Bad(
            f"{path}.operator must be one of {', '.join(_OPERATORS)}, not {operator!r}"
        )
    values = tuple(
        fields.string(v, f"{path}.values[{i}]")
        for i, v in enumerate(fields.seq(expr.get("values"), f"{path}.values"))
    )
    if operator in ("In", "NotIn") and not values:
        raise fields.Bad(f"{path}.values must not be empty for operator {operator}")
    if operator in ("Exists", "DoesNotExist") and values:
        raise fields.Bad(f"{path}.values must be empty for operator {operator}")
    return Expression(key, operator, values)


def _traffic_type(obj: index.Obj, idx: index.Index) -> model.TrafficType:
    """The Gateway's label, else its GatewayClass's, else service (as istiod reads it)."""
    gateway_class = idx.gateway_classes.get(wellknown.GATEWAY_CLASS)
    default = model.TrafficType.SERVICE.value
    if gateway_class is not None:
        default = gateway_class.labels.get(wellknown.WAYPOINT_FOR, default)
    value = obj.labels.get(wellknown.WAYPOINT_FOR, default)
    try:
        return model.TrafficType(value)
    except ValueError:
        allowed = ", ".join(t.value for t in model.TrafficType)
        raise _bad(
            f"label {wellknown.WAYPOINT_FOR}={value!r} must be one of {allowed}",
            status.R_INVALID_PARAMETERS,
        ) from None


def _scope(obj: index.Obj) -> str | None:
    value = obj.annotations.get(wellknown.FOR_SERVICE_ACCOUNT)
    if value is None:
        return None
    if len(value) > 253 or not _SA_NAME.match(value):
        raise _bad(
            f"annotation {wellknown.FOR_SERVICE_ACCOUNT}={value!r} is not a ServiceAccount name",
            status.R_INVALID_PARAMETERS,
        )
    return value

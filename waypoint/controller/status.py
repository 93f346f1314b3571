"""Gateway API status, built purely from what the controller observed.

Conditions keep their ``lastTransitionTime`` while their status stays the same, so recomputing
the status of an unchanged world yields an identical dict and the controller writes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from waypoint import model, wellknown
from waypoint.kube import constants
from waypoint.translate import schemacheck

Obj = dict[str, Any]
# metav1.Condition's message limit (and the Gateway API CRDs' maxLength).
MAX_MESSAGE = 32768
# Istio's condition on a Service that names a waypoint (pilot/pkg/model/service.go).
WAYPOINT_BOUND = "istio.io/WaypointBound"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One condition as the controller judges it, before timestamps."""

    type: str
    status: bool
    reason: str
    message: str = ""


def conditions(
    verdicts: Sequence[Verdict], generation: int, previous: Sequence[Mapping[str, Any]], now: str
) -> list[Obj]:
    before = {str(c.get("type")): c for c in previous}
    result = []
    for verdict in verdicts:
        status = "True" if verdict.status else "False"
        old = before.get(verdict.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        result.append(
            {
                "type": verdict.type,
                "status": status,
                "reason": verdict.reason,
                "message": verdict.message[:MAX_MESSAGE],
                "observedGeneration": generation,
                "lastTransitionTime": since or now,
            }
        )
    return result


def _generation(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def gateway_class_status(
    gateway_class: Mapping[str, Any],
    now: str,
    problem: str | None = None,
    extra: Sequence[Verdict] = (),
) -> Obj:
    """``Accepted``; False with ``InvalidParameters`` when its parametersRef is missing or
    invalid, as Gateway API's GatewayClassReasonInvalidParameters specifies. Then ``extra``
    (the controller's own, such as ``OptionalKindsAvailable``)."""
    previous = (gateway_class.get("status") or {}).get("conditions") or []
    verdict = (
        Verdict("Accepted", False, "InvalidParameters", problem)
        if problem
        else Verdict("Accepted", True, "Accepted", f"handled by {constants.CONTROLLER_NAME}")
    )
    return {"conditions": conditions([verdict, *extra], _generation(gateway_class), previous, now)}


# Route kinds a listener of each protocol can take here; routes reach a waypoint through the
# Services it serves (GAMMA), and only HTTPRoute and GRPCRoute are translated.
ROUTE_GROUP = wellknown.GATEWAY_API_GROUP
HTTP_KINDS = ("HTTPRoute", "GRPCRoute")
SUPPORTED_KINDS = {
    wellknown.HBONE_PROTOCOL: HTTP_KINDS,
    wellknown.PROXY_PROTOCOL: HTTP_KINDS,  # behind ztunnel's sandwich: the same routes
    "HTTP": HTTP_KINDS,
    "HTTPS": HTTP_KINDS,
}


def listener_kinds(listener: Mapping[str, Any]) -> tuple[list[Obj], list[str]]:
    """The listener's ``supportedKinds`` and the kinds it asks for that are not supported.

    Gateway API (ListenerStatus.SupportedKinds): kinds in ``allowedRoutes.kinds`` that the
    implementation does not support must not be listed, and make ``ResolvedRefs`` False with
    reason ``InvalidRouteKinds``."""
    supported = SUPPORTED_KINDS.get(str(listener.get("protocol") or ""), ())
    wanted = (listener.get("allowedRoutes") or {}).get("kinds") or [
        {"group": ROUTE_GROUP, "kind": kind} for kind in supported
    ]
    kinds: list[Obj] = []
    invalid: list[str] = []
    for item in wanted:
        group = str(item.get("group", ROUTE_GROUP) if isinstance(item, Mapping) else "")
        kind = str(item.get("kind", "") if isinstance(item, Mapping) else item)
        if group == ROUTE_GROUP and kind in supported:
            entry = {"group": group, "kind": kind}
            if entry not in kinds:
                kinds.append(entry)
        else:
            invalid.append(f"{group}/{kind}" if group else kind)
    return kinds, invalid


@dataclasses.dataclass(frozen=True)
class Listeners:
    """What the controller observed for the Gateway's listeners: routes attached to its
    front listener (HBONE, or PROXY behind ztunnel's sandwich) through the Services the
    waypoint serves."""

    attached_routes: int = 0


def gateway_status(
    gateway: Mapping[str, Any],
    accepted: Verdict,
    programmed: Verdict,
    addresses: Sequence[str],
    now: str,
    extra: Sequence[Verdict] = (),
    observed: Listeners | None = None,
) -> Obj:
    """Gateway conditions (plus ``extra`` ones), each listener's, and the Service ClusterIP as
    address. Every condition carries the Gateway's generation as ``observedGeneration``.
    Schema problems of the Gateway as seen (``schemacheck``) add a SchemaValid condition."""
    observed = observed or Listeners()
    previous = gateway.get("status") or {}
    generation = _generation(gateway)
    verdicts = [accepted, programmed, *schema_verdicts(gateway)]
    result: Obj = {
        "conditions": conditions(
            [*verdicts, *extra], generation, previous.get("conditions") or [], now
        )
    }
    if addresses:
        result["addresses"] = [{"type": "IPAddress", "value": address} for address in addresses]
    old_listeners = {str(item.get("name")): item for item in previous.get("listeners") or []}
    listeners = []
    for listener in (gateway.get("spec") or {}).get("listeners") or []:
        name = str(listener.get("name"))
        old = (old_listeners.get(name) or {}).get("conditions") or []
        kinds, invalid = listener_kinds(listener)
        resolved = (
            Verdict(
                "ResolvedRefs",
                False,
                "InvalidRouteKinds",
                f"route kinds not supported on a {listener.get('protocol')} listener: "
                f"{', '.join(invalid)}",
            )
            if invalid
            else Verdict("ResolvedRefs", True, "ResolvedRefs")
        )
        verdicts = [
            Verdict("Accepted", accepted.status, accepted.reason, accepted.message),
            Verdict("Programmed", programmed.status, programmed.reason, programmed.message),
            resolved,
        ]
        front = listener.get("protocol") in (wellknown.HBONE_PROTOCOL, wellknown.PROXY_PROTOCOL)
        listeners.append(
            {
                "name": name,
                "supportedKinds": kinds,
                "attachedRoutes": observed.attached_routes if front and accepted.status else 0,
                "conditions": conditions(verdicts, generation, old, now),
            }
        )
    if listeners:
        result["listeners"] = listeners
    return result


def schema_verdicts(obj: Mapping[str, Any]) -> list[Verdict]:
    """The object's schema problems as one verdict, worded as the translation words them."""
    found = schemacheck.conditions(obj)
    if not found:
        return []
    message = "; ".join(c.message for c in found)
    return [Verdict(found[0].type, False, found[0].reason, message)]


def waypoint_bound(service: Mapping[str, Any], verdict: model.Condition | None, now: str) -> Obj:
    """A Service's status with Istio's ``istio.io/WaypointBound`` condition set from
    ``verdict``, or removed when the Service names no waypoint (None). Other conditions and
    fields (``loadBalancer``) are kept. The shape is Istio's: ``status.conditions`` of the
    Service, written by istiod's status queue (pilot/pkg/model/service.go ``WaypointBound``)."""
    previous = dict(service.get("status") or {})
    others = [c for c in previous.get("conditions") or [] if c.get("type") != WAYPOINT_BOUND]
    mine = [c for c in previous.get("conditions") or [] if c.get("type") == WAYPOINT_BOUND]
    if verdict is not None:
        judged = Verdict(verdict.type, verdict.status, verdict.reason, verdict.message)
        others += conditions([judged], _generation(service), mine, now)
    if others:
        previous["conditions"] = others
    else:
        previous.pop("conditions", None)
    return previous


def route_parents(route: Mapping[str, Any], verdict: model.ResourceStatus, now: str) -> list[Obj]:
    """The route's ``status.parents``: other controllers' entries kept, ours recomputed."""
    previous = (route.get("status") or {}).get("parents") or []
    others = [p for p in previous if p.get("controllerName") != constants.CONTROLLER_NAME]
    ours_before = {
        _parent_key(p.get("parentRef") or {}): p
        for p in previous
        if p.get("controllerName") == constants.CONTROLLER_NAME
    }
    generation = _generation(route)
    ours = []
    for parent in sorted(verdict.parents, key=lambda p: (str(p.parent), p.port or 0)):
        ref = _parent_ref(parent)
        old = (ours_before.get(_parent_key(ref)) or {}).get("conditions") or []
        verdicts = [Verdict(c.type, c.status, c.reason, c.message) for c in parent.conditions]
        ours.append(
            {
                "parentRef": ref,
                "controllerName": constants.CONTROLLER_NAME,
                "conditions": conditions(verdicts, generation, old, now),
            }
        )
    return others + ours


def policy_status(
    policy: Mapping[str, Any], verdict: model.ResourceStatus, now: str, own_conditions: bool = True
) -> Obj:
    """A policy's status: its own ``conditions`` (Accepted, ResolvedRefs) and, as Gateway
    API's PolicyAncestorStatus, one ``ancestors`` entry per target with our controllerName.
    Other controllers' ancestors are kept. An invalid policy has no judged targets: each of
    its ``spec.targetRefs`` then carries the policy's own conditions.

    Without ``own_conditions`` (another project's kind, whose top-level conditions its own
    controller writes) only our ancestors change, so two controllers never fight."""
    previous = policy.get("status") or {}
    generation = _generation(policy)
    own = [Verdict(c.type, c.status, c.reason, c.message) for c in verdict.conditions]
    others = [
        a
        for a in previous.get("ancestors") or []
        if a.get("controllerName") != constants.CONTROLLER_NAME
    ]
    ours_before = {
        _parent_key(a.get("ancestorRef") or {}): a
        for a in previous.get("ancestors") or []
        if a.get("controllerName") == constants.CONTROLLER_NAME
    }
    targets: list[tuple[Obj, list[Verdict]]] = []
    for parent in verdict.parents:
        judged = [Verdict(c.type, c.status, c.reason, c.message) for c in parent.conditions]
        # Policy-wide findings (a missing mirror Service) hold for every target.
        extra = [v for v in own if v.type not in {j.type for j in judged}]
        targets.append((_parent_ref(parent), judged + extra))
    if not verdict.parents:
        namespace = str((policy.get("metadata") or {}).get("namespace") or "")
        targets = [(ref, own) for ref in _target_refs(policy, namespace)]
    ancestors = [
        {
            "ancestorRef": ref,
            "controllerName": constants.CONTROLLER_NAME,
            "conditions": conditions(
                verdicts,
                generation,
                (ours_before.get(_parent_key(ref)) or {}).get("conditions") or [],
                now,
            ),
        }
        for ref, verdicts in targets
    ]
    result = {k: v for k, v in previous.items() if k != "ancestors"}
    if own_conditions:
        result["conditions"] = conditions(own, generation, previous.get("conditions") or [], now)
    result["ancestors"] = others + ancestors
    return result


def _target_refs(policy: Mapping[str, Any], namespace: str) -> list[Obj]:
    refs = []
    for raw in (policy.get("spec") or {}).get("targetRefs") or []:
        if not isinstance(raw, Mapping) or not raw.get("kind") or not raw.get("name"):
            continue
        ref: Obj = {
            "group": str(raw.get("group") or ""),
            "kind": str(raw["kind"]),
            "namespace": namespace,
            "name": str(raw["name"]),
        }
        if raw.get("sectionName"):
            ref["sectionName"] = str(raw["sectionName"])
        refs.append(ref)
    return refs[:16]


def _parent_ref(parent: model.ParentStatus) -> Obj:
    ref: Obj = {
        "group": parent.parent.group,
        "kind": parent.parent.kind,
        "namespace": parent.parent.namespace,
        "name": parent.parent.name,
    }
    if parent.port is not None:
        ref["port"] = parent.port
    if parent.section_name is not None:
        ref["sectionName"] = parent.section_name
    return ref


def _parent_key(ref: Mapping[str, Any]) -> tuple[str, str, str, str, int, str]:
    return (
        str(ref.get("group", "")),
        str(ref.get("kind", "")),
        str(ref.get("namespace", "")),
        str(ref.get("name", "")),
        int(ref.get("port") or 0),
        str(ref.get("sectionName") or ""),
    )

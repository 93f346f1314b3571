"""Conditions collected while translating, merged into one ``ResourceStatus`` per object.

Translation never raises for bad input: every problem becomes a condition on the object that
caused it. Several findings of the same condition type on one object (or one route parent)
merge: the condition is False if any finding is, with the first False reason and all False
messages joined in the order they were found. Findings are made while walking inputs in sorted
order, so a status never depends on the order the inputs came in.
"""

from __future__ import annotations

import dataclasses

from waypoint import model

ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
# Istio's condition on Services (and here Namespaces and Pods) that name a waypoint.
WAYPOINT_BOUND = "istio.io/WaypointBound"

# Gateway API reasons.
R_ACCEPTED = "Accepted"
R_RESOLVED = "ResolvedRefs"
R_INVALID = "Invalid"
R_LISTENERS_NOT_VALID = "ListenersNotValid"
R_INVALID_PARAMETERS = "InvalidParameters"
R_UNSUPPORTED_VALUE = "UnsupportedValue"
R_NO_MATCHING_PARENT = "NoMatchingParent"
R_NOT_ALLOWED = "NotAllowedByListeners"
R_BACKEND_NOT_FOUND = "BackendNotFound"
R_INVALID_KIND = "InvalidKind"
R_UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
R_INCOMPATIBLE_FILTERS = "IncompatibleFilters"
R_CONFLICTED = "Conflicted"

# Waypoint binding reasons.
R_WAYPOINT_ACCEPTED = "WaypointAccepted"
R_WAYPOINT_NOT_FOUND = "WaypointNotFound"
R_WAYPOINT_NOT_ALLOWED = "WaypointNotAllowed"
R_WAYPOINT_WRONG_TRAFFIC = "WaypointTrafficTypeMismatch"
R_SERVICE_ACCOUNT_MISMATCH = "ServiceAccountMismatch"
R_SERVICE_ACCOUNT_UNKNOWN = "ServiceAccountUnknown"
R_NO_ADDRESS = "NoAddress"
R_UNSUPPORTED_SERVICE = "UnsupportedServiceType"


def ok(type_: str, reason: str, message: str = "") -> model.Condition:
    return model.Condition(type=type_, status=True, reason=reason, message=message)


def fail(type_: str, reason: str, message: str) -> model.Condition:
    return model.Condition(type=type_, status=False, reason=reason, message=message)


@dataclasses.dataclass(frozen=True)
class ParentKey:
    """One route parentRef as written: the Service, the optional port and section name."""

    parent: model.ObjectRef
    port: int | None
    section: str | None = None


def ref_key(ref: model.ObjectRef) -> tuple[str, str, str, str]:
    return (ref.group, ref.kind, ref.namespace, ref.name)


def _merge(found: list[model.Condition]) -> tuple[model.Condition, ...]:
    by_type: dict[str, list[model.Condition]] = {}
    for cond in found:
        by_type.setdefault(cond.type, []).append(cond)
    merged = []
    for type_, conds in sorted(by_type.items()):
        bad = [c for c in conds if not c.status]
        if not bad:
            merged.append(conds[0])
            continue
        messages = list(dict.fromkeys(c.message for c in bad if c.message))
        merged.append(fail(type_, bad[0].reason, "; ".join(messages)))
    return tuple(merged)


class Book:
    """Findings per object and per route parent; ``statuses()`` gives the final verdicts."""

    def __init__(self) -> None:
        self._own: dict[tuple[str, str, str, str], tuple[model.ObjectRef, list[model.Condition]]]
        self._own = {}
        self._parents: dict[tuple[str, str, str, str], dict[ParentKey, list[model.Condition]]]
        self._parents = {}

    def add(self, ref: model.ObjectRef, cond: model.Condition) -> None:
        self._own.setdefault(ref_key(ref), (ref, []))[1].append(cond)

    def add_parent(self, ref: model.ObjectRef, key: ParentKey, cond: model.Condition) -> None:
        self._own.setdefault(ref_key(ref), (ref, []))
        self._parents.setdefault(ref_key(ref), {}).setdefault(key, []).append(cond)

    def parent_keys(self, ref: model.ObjectRef) -> list[ParentKey]:
        """The parents a route was judged for so far, in the order they were first found."""
        return list(self._parents.get(ref_key(ref), {}))

    def has_failure(self, ref: model.ObjectRef, type_: str) -> bool:
        entry = self._own.get(ref_key(ref))
        return entry is not None and any(c.type == type_ and not c.status for c in entry[1])

    def statuses(self) -> tuple[model.ResourceStatus, ...]:
        result = []
        for key in sorted(self._own):
            ref, conds = self._own[key]
            parents = self._parents.get(key, {})
            ordered = sorted(
                parents.items(),
                key=lambda item: (
                    ref_key(item[0].parent),
                    -1 if item[0].port is None else item[0].port,
                    item[0].section or "",
                ),
            )
            result.append(
                model.ResourceStatus(
                    ref=ref,
                    conditions=_merge(conds),
                    parents=tuple(
                        model.ParentStatus(
                            parent=pk.parent,
                            port=pk.port,
                            conditions=_merge(pc),
                            section_name=pk.section,
                        )
                        for pk, pc in ordered
                    ),
                )
            )
        return tuple(result)

"""Schema problems (``waypoint.schema``) as status conditions, so every shell reports them alike.

A problem does not reject the object: the translator still reads what it understands, and
judges meaning itself. Each object with problems gets a ``waypoint.dev/SchemaValid: False``
condition, one message per problem; a route gets it on every parent it was judged for too,
because a route's status is written per parent (Gateway API's RouteParentStatus). The type
has a domain prefix, as ``metav1.Condition`` asks of types that are not Kubernetes' own
(apimachinery ``pkg/apis/meta/v1/types.go``: "CamelCase or in foo.example.com/CamelCase").
On a cluster the API server
prunes unknown fields before anyone reads them, so there this mostly reports values the
installed CRDs allow and these schemas do not (a newer or older Gateway API release).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from waypoint import model, schema, wellknown
from waypoint.translate import fields, index, status

SCHEMA_VALID = "waypoint.dev/SchemaValid"
R_UNKNOWN_FIELD = "UnknownField"
R_INVALID = status.R_INVALID
# A world with one badly broken object should still give a readable status.
MAX_PROBLEMS = 10
_CLUSTER_SCOPED = {
    (wellknown.GATEWAY_API_GROUP, "GatewayClass"),
    (wellknown.CORE_GROUP, "Namespace"),
}
_ROUTES = {(wellknown.GATEWAY_API_GROUP, "HTTPRoute"), (wellknown.GATEWAY_API_GROUP, "GRPCRoute")}


def _ref(raw: Mapping[str, Any]) -> model.ObjectRef:
    """The object's ref as the other stages build it (namespace "default" when unset)."""
    group, kind = index.group_of(raw.get("apiVersion")), str(raw.get("kind"))
    meta = raw.get("metadata")
    meta = meta if fields.is_mapping(meta) else {}
    namespace = meta.get("namespace")
    namespace = namespace if isinstance(namespace, str) and namespace else "default"
    if (group, kind) in _CLUSTER_SCOPED:
        namespace = ""
    return model.ObjectRef(group, kind, namespace, str(meta.get("name") or ""))


def _messages(problems: tuple[schema.Problem, ...]) -> tuple[str, ...]:
    shown = [str(p) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        shown.append(f"and {len(problems) - MAX_PROBLEMS} more schema problem(s)")
    return tuple(shown)


def _reason(problems: tuple[schema.Problem, ...]) -> str:
    unknown = all(p.message.startswith("unknown field") for p in problems)
    return R_UNKNOWN_FIELD if unknown else R_INVALID


def conditions(raw: Mapping[str, Any]) -> list[model.Condition]:
    """One False SchemaValid condition per problem of ``raw`` (none when it has none); the
    translation's status merges them into one, joining the messages with "; "."""
    problems = schema.check(raw)
    if not problems:
        return []
    reason = _reason(problems)
    return [status.fail(SCHEMA_VALID, reason, message) for message in _messages(problems)]


def report(objects: Iterable[Mapping[str, Any]], book: status.Book) -> None:
    """Add a SchemaValid condition to each object with problems (call after routes attach)."""
    found = []
    for raw in objects:
        conds = conditions(raw) if fields.is_mapping(raw) else []
        if conds:
            ref = _ref(raw)
            found.append((status.ref_key(ref), tuple(c.message for c in conds), ref, conds))
    # Sorted: two differing copies of one object report in the same order whatever the input.
    for _key, _messages_key, ref, conds in sorted(found, key=lambda item: item[:2]):
        for cond in conds:
            book.add(ref, cond)
        if (ref.group, ref.kind) in _ROUTES:
            for parent in book.parent_keys(ref):
                for cond in conds:
                    book.add_parent(ref, parent, cond)

"""What a waypoint serves, and which claims on it did not bind, from one translation.

The Gateway's ``waypoint.dev/Bound`` condition, its listener's ``attachedRoutes`` and
``waypoint status`` all read these, so a per-service-account waypoint that serves nothing says
so, and why, instead of looking healthy.
"""

from __future__ import annotations

from waypoint import model
from waypoint import names as envoy_names
from waypoint.controller import status

BOUND = "waypoint.dev/Bound"
# Translation's condition on the Services, Pods and Namespaces that name a waypoint.
WAYPOINT_BOUND = status.WAYPOINT_BOUND


def services(waypoint: model.Waypoint | None) -> list[str]:
    """``ns/name`` of every Service the waypoint serves, sorted."""
    return sorted(
        {
            f"{d.namespace}/{d.name}"
            for d in (waypoint.destinations if waypoint else ())
            if d.kind is model.DestinationKind.SERVICE
        }
    )


def workloads(waypoint: model.Waypoint | None) -> list[str]:
    """``ns/name`` of every workload (Pod) the waypoint serves, sorted."""
    return sorted(
        {
            f"{d.namespace}/{d.name}"
            for d in (waypoint.destinations if waypoint else ())
            if d.kind is model.DestinationKind.WORKLOAD
        }
    )


def routes(waypoint: model.Waypoint | None) -> list[str]:
    """``Kind ns/name`` of every route attached through what the waypoint serves, sorted."""
    found = set()
    for destination in waypoint.destinations if waypoint else ():
        for route in destination.routes:
            ref = _route_ref(route.name)
            if ref is not None:
                found.add(f"{ref.kind} {ref.namespace}/{ref.name}")
    return sorted(found)


def _route_ref(text: str) -> envoy_names.RouteName | None:
    try:
        return envoy_names.parse_route_name(text)
    except ValueError:
        return None


def unbound_claims(
    translation: model.Translation, namespace: str, name: str
) -> list[tuple[str, str, str]]:
    """(``Kind ns/name``, reason, message) of every object that names this waypoint but is not
    bound to it: an account outside its scope, an unknown account, the wrong traffic type,
    not admitted by ``allowedRoutes``. Binding words its findings about a waypoint as
    ``waypoint ns/name: …`` or ``… names waypoint ns/name, …``."""
    marks = (f"waypoint {namespace}/{name}: ", f"names waypoint {namespace}/{name}, ")
    found = []
    for verdict in translation.statuses:
        for cond in verdict.conditions:
            if cond.type != WAYPOINT_BOUND or cond.status:
                continue
            if any(mark in cond.message for mark in marks):
                ref = verdict.ref
                where = f"{ref.kind} {ref.namespace}/{ref.name}" if ref.namespace else ref.kind
                found.append((where, cond.reason, cond.message))
    return found


def verdict(translation: model.Translation, waypoint: model.Waypoint) -> status.Verdict:
    """``waypoint.dev/Bound``: True while the waypoint serves a Service or a workload."""
    served = services(waypoint)
    pods = workloads(waypoint)
    claims = unbound_claims(translation, waypoint.namespace, waypoint.name)
    scope = (
        f" (scoped to ServiceAccount {waypoint.scope_service_account})"
        if waypoint.scope_service_account
        else ""
    )
    not_bound = "; ".join(f"{where}: {reason}" for where, reason, _ in claims)
    if served or pods:
        message = f"serves {len(served)} Service(s) and {len(pods)} workload(s){scope}"
        if not_bound:
            message += f"; named but not bound: {not_bound}"
        return status.Verdict(BOUND, True, "Bound", message)
    if claims:
        details = "; ".join(f"{where}: {message}" for where, _, message in claims)
        return status.Verdict(BOUND, False, claims[0][1], f"serves nothing{scope}: {details}")
    return status.Verdict(
        BOUND,
        False,
        "NothingBound",
        f"serves nothing{scope}: no Service, Pod or Namespace names it with istio.io/use-waypoint",
    )

"""Fail closed: Istio AuthorizationPolicies that make ztunnel admit only the waypoint.

Istio's guide ("Restricting workloads to only accept traffic from waypoints", istio.io
docs/ambient/usage/l4-policy and ambientmesh.io docs/security/waypoint-authz) gives an ALLOW
policy, enforced by ztunnel at L4, whose only source principal is the waypoint's
identity: traffic that skips the waypoint (a client ztunnel that lost the waypoint binding, a
direct pod-IP connection) is refused instead of bypassing L7 policy.

``waypoint apply/generate --require-waypoint`` emits it namespace-wide (no selector), for a
namespace enrolled with ``--enroll-namespace``; and a second ALLOW policy selecting the
waypoint's own pods that admits every source. That second policy matters behind ztunnel's
sandwich, where the waypoint pod is in ambient mode and its ztunnel would otherwise apply the
first policy to the clients connecting to it; with HBONE the waypoint pod is outside the mesh
and the policy is inert. ALLOW policies add up (any match admits), so the waypoint stays
reachable while every other workload admits only the waypoint.
"""

from __future__ import annotations

from typing import Any

from waypoint import names, wellknown

AUTHORIZATION_POLICY = "AuthorizationPolicy"
REQUIRE_SUFFIX = "-require-waypoint"
WAYPOINT_INBOUND_SUFFIX = "-waypoint-inbound"


def principal(trust_domain: str, namespace: str, service_account: str) -> str:
    """An AuthorizationPolicy principal: the SPIFFE ID without ``spiffe://``."""
    return f"{trust_domain}/ns/{namespace}/sa/{service_account}"


def check(traffic_type: str, service_account: str | None) -> None:
    """Refuse waypoints the namespace-wide policy would not fit."""
    if service_account:
        raise ValueError(
            "--require-waypoint writes a namespace-wide policy; a waypoint scoped to one "
            "service account does not serve the whole namespace (write a policy with a "
            "selector instead, see docs/istio.md)"
        )
    if traffic_type == "none":
        raise ValueError("--require-waypoint needs a waypoint that serves traffic, not --for none")


def policies(namespace: str, name: str, trust_domain: str) -> list[dict[str, Any]]:
    """The two AuthorizationPolicies, in the order to apply them (the waypoint's own first,
    so that there is never a moment when it is refused its clients)."""
    object_names = names.names_for(namespace, name)
    labels = {
        wellknown.MANAGED_BY_LABEL: "waypoint",
        wellknown.GATEWAY_NAME_LABEL: name,
    }
    waypoint = principal(trust_domain, namespace, object_names.service_account)
    inbound = {
        "apiVersion": wellknown.ISTIO_SECURITY_API_VERSION,
        "kind": AUTHORIZATION_POLICY,
        "metadata": {
            "name": name + WAYPOINT_INBOUND_SUFFIX,
            "namespace": namespace,
            "labels": labels,
        },
        "spec": {
            "selector": {"matchLabels": {wellknown.GATEWAY_NAME_LABEL: name}},
            "action": "ALLOW",
            "rules": [{}],
        },
    }
    require = {
        "apiVersion": wellknown.ISTIO_SECURITY_API_VERSION,
        "kind": AUTHORIZATION_POLICY,
        "metadata": {"name": name + REQUIRE_SUFFIX, "namespace": namespace, "labels": labels},
        "spec": {
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": [waypoint]}}]}],
        },
    }
    return [inbound, require]

"""TrafficPolicy's cluster part → Envoy cluster settings and route hash policies.

Load balancing, circuit breakers and outlier detection are settings of the upstream cluster
(``waypoint.envoy.clusters``); a ConsistentHash balancer also needs each route to that
cluster to say what it hashes on (``waypoint.envoy.routes``). No HTTP filter is involved, so
this is not one of ``waypoint.envoy.policies``' hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2

from waypoint import model
from waypoint.envoy import protos

_LB = {
    model.LoadBalancerType.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    model.LoadBalancerType.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    model.LoadBalancerType.RANDOM: cluster_pb2.Cluster.RANDOM,
    model.LoadBalancerType.CONSISTENT_HASH: cluster_pb2.Cluster.RING_HASH,
}


# --- routes ----------------------------------------------------------------------------------


def hash_policies(lb: model.LoadBalancer | None) -> list[rc_pb2.RouteAction.HashPolicy]:
    """What a route to a ConsistentHash cluster hashes on."""
    if lb is None or lb.type is not model.LoadBalancerType.CONSISTENT_HASH:
        return []
    if lb.hash_header is not None:
        return [
            rc_pb2.RouteAction.HashPolicy(
                header=rc_pb2.RouteAction.HashPolicy.Header(header_name=lb.hash_header)
            )
        ]
    cookie = rc_pb2.RouteAction.HashPolicy.Cookie(name=lb.hash_cookie or "")
    if lb.cookie_ttl is not None:
        cookie.ttl.CopyFrom(protos.duration(lb.cookie_ttl))
    return [rc_pb2.RouteAction.HashPolicy(cookie=cookie)]


def load_balancers(waypoint: model.Waypoint) -> dict[str, model.LoadBalancer]:
    """The waypoint's clusters that have a load balancer policy, by name."""
    return {
        c.name: c.policy.load_balancer
        for c in waypoint.clusters
        if c.policy is not None and c.policy.load_balancer is not None
    }


def apply_hashing(
    action: rc_pb2.RouteAction, clusters: Iterable[str], lbs: Mapping[str, model.LoadBalancer]
) -> None:
    """The hash policy of the first of ``clusters`` that hashes, if any."""
    for name in clusters:
        found = hash_policies(lbs.get(name))
        if found:
            action.hash_policy.extend(found)
            return


# --- clusters --------------------------------------------------------------------------------


def apply_cluster(out: cluster_pb2.Cluster, policy: model.ClusterPolicy | None) -> None:
    """Load balancing, circuit breakers and outlier detection of one upstream cluster."""
    if policy is None:
        return
    if policy.load_balancer is not None:
        out.lb_policy = _LB[policy.load_balancer.type]
    if policy.circuit_breaker is not None:
        out.circuit_breakers.CopyFrom(_circuit_breakers(policy.circuit_breaker))
    if policy.outlier_detection is not None:
        out.outlier_detection.CopyFrom(_outlier(policy.outlier_detection))


def _circuit_breakers(spec: model.CircuitBreaker) -> circuit_breaker_pb2.CircuitBreakers:
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    pairs = (
        ("max_connections", spec.max_connections),
        ("max_pending_requests", spec.max_pending_requests),
        ("max_requests", spec.max_parallel_requests),
        ("max_retries", spec.max_parallel_retries),
    )
    for field, value in pairs:
        if value is not None:
            getattr(thresholds, field).CopyFrom(protos.uint32(value))
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _outlier(spec: model.OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    out = outlier_detection_pb2.OutlierDetection()
    if spec.consecutive_5xx is not None:
        out.consecutive_5xx.CopyFrom(protos.uint32(spec.consecutive_5xx))
    if spec.interval is not None:
        out.interval.CopyFrom(protos.duration(spec.interval))
    if spec.base_ejection_time is not None:
        out.base_ejection_time.CopyFrom(protos.duration(spec.base_ejection_time))
    if spec.max_ejection_percent is not None:
        out.max_ejection_percent.CopyFrom(protos.uint32(spec.max_ejection_percent))
    return out

"""TrafficPolicy local rate limit → Envoy's local_ratelimit filter, one token bucket per route.

Last before the router, disabled in the HCM; each route with a limit enables it with its own
bucket, so routes never share a budget. Over budget answers 429 (Envoy's default).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import percent_pb2, token_bucket_pb2

from waypoint import model
from waypoint.envoy import filters, perroute, protos
from waypoint.envoy import options as options_mod

LOCAL_RATE_LIMIT = "envoy.filters.http.local_ratelimit"


def config(spec: model.LocalRateLimit, route_name: str) -> local_rate_limit_pb2.LocalRateLimit:
    """A token bucket for this route alone."""
    always = base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        )
    )
    return local_rate_limit_pb2.LocalRateLimit(
        stat_prefix=filters.stat_prefix(route_name),
        token_bucket=token_bucket_pb2.TokenBucket(
            max_tokens=spec.tokens,
            tokens_per_fill=protos.uint32(spec.tokens),
            fill_interval=protos.duration(spec.fill_interval),
        ),
        filter_enabled=always,
        filter_enforced=always,
    )


# --- the hook (waypoint.envoy.policies.Hook) -------------------------------------------------


def http_filters(
    destination: model.Destination, _providers: Sequence[model.JwtProvider]
) -> list[hcm_pb2.HttpFilter]:
    """The disabled limiter, when some route of the destination has a limit."""
    if not any(p.rate_limit for p in perroute.route_policies(destination)):
        return []
    limiter = local_rate_limit_pb2.LocalRateLimit(stat_prefix="local_rate_limit")
    return [perroute.disabled(LOCAL_RATE_LIMIT, limiter)]


def patch_route(
    out: rc_pb2.Route, policy: model.RoutePolicy | None, _destination: model.Destination
) -> None:
    """Enable the limiter with the route's bucket."""
    if policy is not None and policy.rate_limit is not None:
        perroute.enable(out, LOCAL_RATE_LIMIT, config(policy.rate_limit, out.name))


def clusters(
    _waypoint: model.Waypoint, _options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    """None: the buckets are local to each Envoy."""
    return []

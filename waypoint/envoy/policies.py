"""Policies → Envoy: one hook per filter or concern, applied in a fixed order.

As Envoy Gateway's xDS translator does with its per-filter translators, every filter a policy
adds lives in its own module, behind one small interface (``Hook``): its HTTP filters in a
destination's HCM, its settings on each route, and the clusters it needs beside the upstream
ones. ``HOOKS`` fixes the order in which they are asked, and so the order of the HCM's
filters: authentication and Istio authorization first, for every request (jwt_authn, so a
bad token is a 401 before anything else, CUSTOM included; then CUSTOM; then the AUDIT, DENY
and ALLOW RBAC filters); then the per-route ones, disabled unless a route enables them
(``waypoint.envoy.perroute``): fault, ext_authz, local rate limit; then the router.

TrafficPolicy's cluster settings and hash policies are no filter: ``waypoint.envoy.traffic``,
called by the cluster and route builders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from waypoint import model
from waypoint.envoy import (
    custom,
    ext_authz,
    fault,
    filters,
    jwt_authn,
    ratelimit,
    rbac,
    tracing,
)
from waypoint.envoy import options as options_mod


class Hook(Protocol):
    """One filter's or concern's part of a waypoint's Envoy config; a module implements it."""

    def http_filters(
        self, destination: model.Destination, providers: Sequence[model.JwtProvider], /
    ) -> list[hcm_pb2.HttpFilter]:
        """Its filters in the destination's HCM, in order (``providers``: the waypoint's)."""
        ...

    def patch_route(
        self, out: rc_pb2.Route, policy: model.RoutePolicy | None, destination: model.Destination, /
    ) -> None:
        """Its settings on one of the destination's routes, whose policies are ``policy``."""
        ...

    def clusters(
        self, waypoint: model.Waypoint, options: options_mod.BootstrapOptions, /
    ) -> list[cluster_pb2.Cluster]:
        """The clusters it needs beside the upstream ones (sidecars, collectors, JWKS hosts)."""
        ...


HOOKS: tuple[Hook, ...] = (jwt_authn, custom, rbac, fault, ext_authz, ratelimit, tracing)


def http_filters(
    destination: model.Destination, providers: Sequence[model.JwtProvider] = ()
) -> list[hcm_pb2.HttpFilter]:
    """Every hook's filters for the destination's HCM, and then the router."""
    out = [f for hook in HOOKS for f in hook.http_filters(destination, providers)]
    out.append(filters.router())
    return out


def apply_route(
    out: rc_pb2.Route, policy: model.RoutePolicy | None, destination: model.Destination
) -> None:
    """Switch the route's filters on with its settings."""
    for hook in HOOKS:
        hook.patch_route(out, policy, destination)


def extra_clusters(
    waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    """The clusters the hooks need (the caller sorts all clusters by name)."""
    return [c for hook in HOOKS for c in hook.clusters(waypoint, options)]

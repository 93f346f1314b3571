"""Filters switched on per route: in the HCM disabled, enabled by a route's own settings.

ExtAuthzPolicy and TrafficPolicy apply to some routes only, so their filters go into a
destination's HCM disabled, and each route that has the policy enables its filter with
``typed_per_filter_config``. A destination without such policies gets none of these filters,
so a waypoint without policies renders exactly as it would without this mechanism.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import message  # type: ignore[import-untyped,unused-ignore]

from waypoint import model
from waypoint.envoy import protos


def route_policies(destination: model.Destination) -> list[model.RoutePolicy]:
    """The policies of the destination's routes, or of its default route when it has none."""
    found = [r.policy for r in destination.routes if r.policy is not None]
    if not destination.routes and destination.policy is not None:
        found.append(destination.policy)
    return found


def disabled(name: str, config: message.Message) -> hcm_pb2.HttpFilter:
    """The filter as the HCM holds it: off until a route enables it."""
    return hcm_pb2.HttpFilter(name=name, typed_config=protos.pack(config), disabled=True)


def enable(out: rc_pb2.Route, name: str, config: message.Message) -> None:
    """Switch the filter ``name`` on for this route, with the route's own ``config``."""
    wrapped = rc_pb2.FilterConfig(config=protos.pack(config), disabled=False)
    out.typed_per_filter_config[name].CopyFrom(protos.pack(wrapped))

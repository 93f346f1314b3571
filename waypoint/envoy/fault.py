"""TrafficPolicy fault injection → Envoy's fault filter, enabled on the routes that have it.

In the HCM after Istio's authorization filters and before ext_authz, disabled; each route
with a fault enables it with its delay and abort.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import percent_pb2

from waypoint import model
from waypoint.envoy import options as options_mod
from waypoint.envoy import perroute, protos

FAULT = "envoy.filters.http.fault"


def config(spec: model.FaultInjection) -> fault_pb2.HTTPFault:
    """A route's fault: a fixed delay and/or an abort, each for a share of requests."""
    out = fault_pb2.HTTPFault()
    if spec.delay is not None:
        out.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=protos.duration(spec.delay), percentage=_percent(spec.delay_percent)
            )
        )
    if spec.abort_status is not None:
        out.abort.CopyFrom(
            fault_pb2.FaultAbort(
                http_status=spec.abort_status, percentage=_percent(spec.abort_percent)
            )
        )
    return out


def _percent(value: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


# --- the hook (waypoint.envoy.policies.Hook) -------------------------------------------------


def http_filters(
    destination: model.Destination, _providers: Sequence[model.JwtProvider]
) -> list[hcm_pb2.HttpFilter]:
    """The disabled fault filter, when some route of the destination injects faults."""
    if not any(p.fault for p in perroute.route_policies(destination)):
        return []
    return [perroute.disabled(FAULT, fault_pb2.HTTPFault())]


def patch_route(
    out: rc_pb2.Route, policy: model.RoutePolicy | None, _destination: model.Destination
) -> None:
    """Enable the fault filter with the route's fault."""
    if policy is not None and policy.fault is not None:
        perroute.enable(out, FAULT, config(policy.fault))


def clusters(
    _waypoint: model.Waypoint, _options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    """None: faults are made inside Envoy."""
    return []

"""Prometheus metrics of the xDS server and cache (registered once, on import)."""

from __future__ import annotations

import prometheus_client

PUSHES = prometheus_client.Counter(
    "waypoint_xds_pushes",
    "xDS responses sent, by waypoint and resource type.",
    ["waypoint", "type"],
)
NACKS = prometheus_client.Counter(
    "waypoint_xds_nacks",
    "xDS responses an Envoy rejected, by waypoint and resource type.",
    ["waypoint", "type"],
)
REJECTED = prometheus_client.Gauge(
    "waypoint_xds_rejected",
    "1 while the waypoint's newest config was rejected and the last good one is served.",
    ["waypoint"],
)
STREAMS = prometheus_client.Gauge(
    "waypoint_xds_streams",
    "Open ADS streams, by waypoint and protocol variant (sotw or delta).",
    ["waypoint", "variant"],
)
SNAPSHOTS = prometheus_client.Counter(
    "waypoint_xds_snapshots",
    "Snapshots accepted into the cache (unchanged ones are not counted).",
    ["waypoint"],
)


def short_type(type_url: str) -> str:
    """``type.googleapis.com/envoy.config.listener.v3.Listener`` -> ``Listener``."""
    return type_url.rsplit(".", 1)[-1]

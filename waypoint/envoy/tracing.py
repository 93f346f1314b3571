"""Tracing: request ids kept across hops, and spans over OTLP/gRPC when a collector is set.

``patch_hcm`` sets a destination's HCM (``waypoint.envoy.listeners``); as one of
``waypoint.envoy.policies``' hooks, this module adds the collector's cluster and no filter.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from waypoint import model
from waypoint.envoy import grpc_cluster, protos
from waypoint.envoy import options as options_mod

OTEL_CLUSTER = "otel_collector"
OPENTELEMETRY = "envoy.tracers.opentelemetry"


def patch_hcm(
    hcm: hcm_pb2.HttpConnectionManager, options: options_mod.BootstrapOptions, service: str
) -> None:
    """Keep request ids across hops; with a collector, report spans over OTLP/gRPC."""
    # A waypoint is one hop inside the mesh: the caller's x-request-id must survive it.
    hcm.preserve_external_request_id = True
    if not options.otel_collector:
        return
    config = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=OTEL_CLUSTER)
        ),
        service_name=service,
    )
    hcm.tracing.CopyFrom(
        hcm_pb2.HttpConnectionManager.Tracing(
            provider=http_tracer_pb2.Tracing.Http(
                name=OPENTELEMETRY, typed_config=protos.pack(config)
            ),
            spawn_upstream_span=protos.boolean(False),
        )
    )


# --- the hook (waypoint.envoy.policies.Hook) -------------------------------------------------


def http_filters(
    _destination: model.Destination, _providers: Sequence[model.JwtProvider]
) -> list[hcm_pb2.HttpFilter]:
    """None: the tracer is an HCM setting (``patch_hcm``)."""
    return []


def patch_route(
    _out: rc_pb2.Route, _policy: model.RoutePolicy | None, _destination: model.Destination
) -> None:
    """Nothing per route."""


def clusters(
    _waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    """The collector's cluster, when there is one."""
    if not options.otel_collector:
        return []
    return [grpc_cluster.build(OTEL_CLUSTER, options.otel_collector, options)]

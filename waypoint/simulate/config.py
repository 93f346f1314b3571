"""An index over one waypoint's Envoy resources: listeners, clusters and route configurations
by name, with the network filter of each listener unpacked.

It takes either ``waypoint.envoy.resources.Resources`` or a ``Bootstrap`` message (its static
resources), so the simulator reads exactly the config Envoy would run.
"""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.matcher.v3 import string_pb2

from waypoint.envoy import filters, resources
from waypoint.simulate import matching

Source: TypeAlias = resources.Resources | bootstrap_pb2.Bootstrap


class ConfigError(ValueError):
    """The config is missing something a hop needs; the message names the resource."""


@dataclasses.dataclass(frozen=True)
class Index:
    listeners: dict[str, listener_pb2.Listener]
    clusters: dict[str, cluster_pb2.Cluster]
    routes: dict[str, route_pb2.RouteConfiguration]

    @classmethod
    def of(cls, source: Source) -> Index:
        if isinstance(source, bootstrap_pb2.Bootstrap):
            static = source.static_resources
            listeners, clusters, routes = list(static.listeners), list(static.clusters), []
        else:
            listeners, clusters = list(source.listeners), list(source.clusters)
            routes = list(source.routes)
        return cls(
            listeners={item.name: item for item in listeners},
            clusters={item.name: item for item in clusters},
            routes={item.name: item for item in routes},
        )

    def listener(self, name: str) -> listener_pb2.Listener:
        try:
            return self.listeners[name]
        except KeyError:
            raise ConfigError(f"no listener {name!r} in the config") from None

    def network_filter(
        self, listener: listener_pb2.Listener
    ) -> hcm_pb2.HttpConnectionManager | tcp_proxy_pb2.TcpProxy:
        """The terminal filter of the listener's only filter chain."""
        if len(listener.filter_chains) != 1:
            raise matching.UnsupportedConfig(
                f"listener {listener.name} has {len(listener.filter_chains)} filter chains; "
                "the simulator models exactly one"
            )
        chain = listener.filter_chains[0]
        if not chain.filters:
            raise ConfigError(f"listener {listener.name} has no network filter")
        last = chain.filters[-1]
        if last.name == filters.HCM:
            hcm = hcm_pb2.HttpConnectionManager()
            last.typed_config.Unpack(hcm)
            return hcm
        if last.name == filters.TCP_PROXY:
            proxy = tcp_proxy_pb2.TcpProxy()
            last.typed_config.Unpack(proxy)
            return proxy
        raise matching.UnsupportedConfig(f"listener {listener.name}: filter {last.name}")

    def route_config(self, hcm: hcm_pb2.HttpConnectionManager) -> route_pb2.RouteConfiguration:
        if hcm.HasField("route_config"):
            return hcm.route_config
        name = hcm.rds.route_config_name
        if name in self.routes:
            return self.routes[name]
        raise ConfigError(f"HCM {hcm.stat_prefix} names route configuration {name!r}, not found")


def peer_matchers(transport_socket_typed: object) -> tuple[string_pb2.StringMatcher, ...]:
    """The URI SAN matchers of a TLS context (empty when it checks none)."""
    if isinstance(
        transport_socket_typed, tls_pb2.DownstreamTlsContext | tls_pb2.UpstreamTlsContext
    ):
        common = transport_socket_typed.common_tls_context
        context = common.combined_validation_context.default_validation_context
        if not common.HasField("combined_validation_context"):
            context = common.validation_context
        return tuple(m.matcher for m in context.match_typed_subject_alt_names)
    return ()


def downstream_tls(listener: listener_pb2.Listener) -> tls_pb2.DownstreamTlsContext | None:
    chain = listener.filter_chains[0] if listener.filter_chains else None
    if chain is None or not chain.HasField("transport_socket"):
        return None
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    return context


def upstream_tls(cluster: cluster_pb2.Cluster) -> tls_pb2.UpstreamTlsContext | None:
    if not cluster.HasField("transport_socket"):
        return None
    if cluster.transport_socket.name != "envoy.transport_sockets.tls":
        return None
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    return context

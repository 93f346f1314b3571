"""All xDS resources of one waypoint, sorted by name: what the static bootstrap embeds and
what an xDS server serves.

Route configurations are inlined in their listeners (each internal listener owns one), so
``routes`` is empty; ``secrets`` are the two SDS secrets the TLS contexts name, which the
config reads from files (see ``waypoint.envoy.secrets``).
"""

from __future__ import annotations

import dataclasses

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from waypoint import model
from waypoint.envoy import clusters, listeners, secrets
from waypoint.envoy import options as options_mod


@dataclasses.dataclass(frozen=True)
class Resources:
    listeners: tuple[listener_pb2.Listener, ...]
    clusters: tuple[cluster_pb2.Cluster, ...]
    routes: tuple[route_pb2.RouteConfiguration, ...]
    secrets: tuple[secret_pb2.Secret, ...]


def build(waypoint: model.Waypoint, options: options_mod.BootstrapOptions) -> Resources:
    return Resources(
        listeners=tuple(listeners.build(waypoint, options)),
        clusters=tuple(clusters.build(waypoint, options)),
        routes=(),
        # Behind ztunnel's sandwich no TLS context exists, so neither do its secrets.
        secrets=secrets.secrets(options) if waypoint.proxy_port is None else (),
    )

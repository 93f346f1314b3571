"""The minimal Envoy bootstrap of an xDS-fed waypoint: admin, node, and the ADS cluster.

Everything else (listeners, clusters, routes, secrets) arrives over ADS from
:mod:`waypoint.xds.server`. The node names the waypoint as :mod:`waypoint.xds.naming` defines,
which is how the server picks the resources this Envoy gets. ``delta`` selects the incremental
protocol (``DELTA_GRPC``) instead of state of the world (``GRPC``). The internal listener
bootstrap extension is always on, because a waypoint dispatches HBONE tunnels to internal
listeners that arrive later over LDS.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from waypoint.envoy import options as envoy_options
from waypoint.envoy import protos
from waypoint.xds import naming

XDS_CLUSTER = "waypoint-xds"
_INTERNAL_LISTENER = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"


class AddressError(ValueError):
    """An xDS server address that is not ``host:port``."""


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"xDS address must be HOST:PORT, got {text!r}")
    return host, int(port)


def build(
    xds_address: str,
    namespace: str,
    name: str,
    options: envoy_options.BootstrapOptions,
    delta: bool = False,
) -> dict[str, Any]:
    """The bootstrap of waypoint ``namespace/name`` fed by the ADS server at ``xds_address``."""
    key = naming.WaypointKey(namespace, name)
    config_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {
            "id": options.node_id or naming.node_id(key),
            "cluster": naming.node_cluster(key),
        },
        "admin": {
            "address": _socket_address(options.admin_address, options.admin_port),
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            # Reconnect quickly after a control-plane restart, but back off.
                            "retry_policy": {
                                "retry_back_off": {"base_interval": "0.25s", "max_interval": "5s"}
                            },
                        }
                    }
                ],
            },
            "cds_config": config_source,
            "lds_config": config_source,
        },
        "static_resources": {"clusters": [_xds_cluster(xds_address)]},
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {"@type": f"type.googleapis.com/{_INTERNAL_LISTENER}"},
            }
        ],
    }


def _xds_cluster(xds_address: str) -> dict[str, Any]:
    host, port = parse_address(xds_address)
    try:
        ipaddress.ip_address(host)
        discovery = "STATIC"
    except ValueError:
        discovery = "STRICT_DNS"
    return {
        "name": XDS_CLUSTER,
        "type": discovery,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}
            ],
        },
        "typed_extension_protocol_options": {
            protos.HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{protos.HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # A dead control plane is noticed even when no config changes.
                        "connection_keepalive": {"interval": "15s", "timeout": "5s"}
                    }
                },
            }
        },
    }


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}

"""A cluster for a gRPC service beside the waypoint: the extauthz sidecar, an OTLP collector.

The service is at ``host:port`` (DNS-resolved unless the host is an IP) or ``unix:/path``,
and speaks HTTP/2.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from waypoint import names
from waypoint.envoy import options as options_mod
from waypoint.envoy import protos


def build(name: str, target: str, options: options_mod.BootstrapOptions) -> cluster_pb2.Cluster:
    """An HTTP/2 (gRPC) cluster for a sidecar or collector at ``host:port`` or ``unix:/path``."""
    endpoint = endpoint_components_pb2.Endpoint(address=_address(target))
    host = target.rpartition(":")[0]
    dns = not target.startswith("unix:") and not names.is_ip(host)
    out = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STRICT_DNS if dns else cluster_pb2.Cluster.STATIC,
        connect_timeout=protos.duration(options.connect_timeout_seconds),
    )
    out.load_assignment.cluster_name = name
    out.load_assignment.endpoints.add().lb_endpoints.add().endpoint.CopyFrom(endpoint)
    http2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    out.typed_extension_protocol_options[protos.HTTP_PROTOCOL_OPTIONS].CopyFrom(protos.pack(http2))
    return out


def _address(target: str) -> address_pb2.Address:
    if target.startswith("unix:"):
        return address_pb2.Address(pipe=address_pb2.Pipe(path=target[len("unix:") :]))
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {target!r} must be host:port or unix:/path")
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host.strip("[]"), port_value=int(port))
    )

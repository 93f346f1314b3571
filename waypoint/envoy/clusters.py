"""Clusters: upstream Services (plain or over HBONE), the internal hops, and the admin loop.

An HBONE endpoint is an internal address on a ``connect_originate`` listener; its
``ip:port`` travels as endpoint metadata (``envoy.filters.listener.original_dst``), which the
internal_upstream transport socket passes through so that the original_dst listener filter
restores it as the local address, and the tunnel's CONNECT authority is ``ip:targetPort``.

A sandwiched waypoint (``model.Waypoint.proxy_port``) holds no mesh certificate: it reaches
every endpoint in plain TCP, and the ztunnel capturing the waypoint pod adds HBONE on the way.
"""

from __future__ import annotations

import dataclasses
import functools

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.metadata.v3 import metadata_pb2

from waypoint import model, names
from waypoint.envoy import options as options_mod
from waypoint.envoy import policies, protos, routes, secrets, traffic

ADMIN = "admin"  # loops readiness and Prometheus requests back into Envoy's own admin
ORIGINAL_DST_METADATA = "envoy.filters.listener.original_dst"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
INTERNAL_UPSTREAM = "envoy.transport_sockets.internal_upstream"
_HBONE_MATCH = {"tunnel": "hbone"}


def build(
    waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    mesh = waypoint.proxy_port is None
    out = [upstream(cluster, options, mesh=mesh) for cluster in waypoint.clusters]
    if mesh:  # the hop into the internal listeners, which the sandwich does without
        out += [inbound(dest, options) for dest in waypoint.destinations]
    out += [connect_originate(target, options) for target in originate_targets(waypoint)]
    out.append(admin(options))
    out += policies.extra_clusters(waypoint, options)
    return sorted(out, key=lambda cluster: cluster.name)


@dataclasses.dataclass(frozen=True)
class OriginateTarget:
    """One HBONE origination path: a listener and a cluster of the same name.

    ``identity`` None is the generic path (peer anywhere in the trust domain), used for
    endpoints whose service account is unknown; otherwise the peer must be exactly the
    workload ``(namespace, service_account)``.
    """

    identity: tuple[str, str] | None

    @property
    def name(self) -> str:
        return originate_name(self.identity)


def originate_name(identity: tuple[str, str] | None) -> str:
    """``connect_originate`` or ``connect_originate|<namespace>|<service account>``."""
    if identity is None:
        return names.CONNECT_ORIGINATE
    return "|".join((names.CONNECT_ORIGINATE, *identity))


def parse_originate_name(name: str) -> tuple[str, str] | None:
    parts = name.split("|")
    if parts[0] != names.CONNECT_ORIGINATE or len(parts) not in (1, 3) or not all(parts):
        raise ValueError(f"not a connect_originate name: {name!r}")
    return (parts[1], parts[2]) if len(parts) == 3 else None


def _identity(cluster: model.Cluster, endpoint: model.Endpoint) -> tuple[str, str] | None:
    if endpoint.service_account is None:
        return None
    return (cluster.namespace, endpoint.service_account)


def originate_targets(waypoint: model.Waypoint) -> list[OriginateTarget]:
    """Every origination path the waypoint's HBONE endpoints need, sorted by name (none
    behind ztunnel's sandwich, which originates HBONE itself)."""
    if waypoint.proxy_port is not None:
        return []
    targets = {
        OriginateTarget(_identity(c, e)) for c in waypoint.clusters for e in c.endpoints if e.hbone
    }
    return sorted(targets, key=lambda target: target.name)


def _static(name: str, options: options_mod.BootstrapOptions) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=protos.duration(options.connect_timeout_seconds),
    )


def _load_assignment(
    name: str, endpoints: list[endpoint_components_pb2.LbEndpoint]
) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=endpoints)],
    )


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def internal_address(listener: str, endpoint_id: str = "") -> address_pb2.Address:
    return address_pb2.Address(
        envoy_internal_address=address_pb2.EnvoyInternalAddress(
            server_listener_name=listener, endpoint_id=endpoint_id
        )
    )


@functools.cache
def internal_upstream(passthrough_metadata: str | None = None) -> base_pb2.TransportSocket:
    """The transport socket for internal addresses, optionally passing host metadata on.

    Cached: callers copy it and must not mutate it.
    """
    config = internal_upstream_pb2.InternalUpstreamTransport(
        transport_socket=base_pb2.TransportSocket(
            name="envoy.transport_sockets.raw_buffer",
            typed_config=protos.pack(raw_buffer_pb2.RawBuffer()),
        )
    )
    if passthrough_metadata is not None:
        config.passthrough_metadata.append(
            internal_upstream_pb2.InternalUpstreamTransport.MetadataValueSource(
                kind=metadata_pb2.MetadataKind(host=metadata_pb2.MetadataKind.Host()),
                name=passthrough_metadata,
            )
        )
    return base_pb2.TransportSocket(name=INTERNAL_UPSTREAM, typed_config=protos.pack(config))


def _http2(cluster: cluster_pb2.Cluster, options: options_mod.BootstrapOptions) -> None:
    http2 = protocol_pb2.Http2ProtocolOptions(
        connection_keepalive=protocol_pb2.KeepaliveSettings(
            interval=protos.duration(options.keepalive_interval_seconds),
            timeout=protos.duration(options.keepalive_timeout_seconds),
        )
    )
    config = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=http2
        )
    )
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(protos.pack(config))


def upstream(
    cluster: model.Cluster, options: options_mod.BootstrapOptions, *, mesh: bool = True
) -> cluster_pb2.Cluster:
    """A Service port's endpoints: ready ones only; mesh ones through HBONE unless ``mesh``
    is False (then every endpoint is plain)."""
    out = _static(cluster.name, options)
    endpoints = [_lb_endpoint(cluster, e, mesh) for e in cluster.endpoints if e.ready]
    out.load_assignment.CopyFrom(_load_assignment(cluster.name, endpoints))
    if mesh and any(e.hbone for e in cluster.endpoints):
        out.transport_socket_matches.append(
            cluster_pb2.Cluster.TransportSocketMatch(
                name="hbone",
                match=protos.struct(dict(_HBONE_MATCH)),
                transport_socket=internal_upstream(ORIGINAL_DST_METADATA),
            )
        )
    if cluster.protocol is model.Protocol.HTTP2:
        _http2(out, options)
    traffic.apply_cluster(out, cluster.policy)
    return out


def _lb_endpoint(
    cluster: model.Cluster, endpoint: model.Endpoint, mesh: bool
) -> endpoint_components_pb2.LbEndpoint:
    if not (mesh and endpoint.hbone):
        return endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=socket_address(endpoint.address, endpoint.port)
            )
        )
    authority = names.authority(endpoint.address, endpoint.port)
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[ORIGINAL_DST_METADATA].CopyFrom(protos.struct({"local": authority}))
    metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].CopyFrom(protos.struct(dict(_HBONE_MATCH)))
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=internal_address(originate_name(_identity(cluster, endpoint)), authority)
        ),
        metadata=metadata,
    )


def inbound(
    destination: model.Destination, options: options_mod.BootstrapOptions
) -> cluster_pb2.Cluster:
    """The hop from the HBONE listener into a destination's internal listener."""
    name = routes.inbound_name(destination)
    out = _static(name, options)
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=internal_address(name))
    )
    out.load_assignment.CopyFrom(_load_assignment(name, [endpoint]))
    out.transport_socket.CopyFrom(internal_upstream())
    return out


def connect_originate(
    target: OriginateTarget, options: options_mod.BootstrapOptions
) -> cluster_pb2.Cluster:
    """HTTP/2 over mTLS to ``<endpoint ip>:<upstream hbone port>``, the peer's SPIFFE ID checked.

    The peer must be the endpoint's own workload identity when it is known, else anyone in
    our trust domain.
    """
    if target.identity is None:
        san = secrets.trust_domain_matcher(options.trust_domain)
    else:
        san = secrets.exact_matcher(names.spiffe_id(options.trust_domain, *target.identity))
    out = cluster_pb2.Cluster(
        name=target.name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=protos.duration(options.connect_timeout_seconds),
        original_dst_lb_config=cluster_pb2.Cluster.OriginalDstLbConfig(
            upstream_port_override=protos.uint32(options.upstream_hbone_port)
        ),
        transport_socket=secrets.upstream_tls(options, san),
    )
    _http2(out, options)
    return out


def admin(options: options_mod.BootstrapOptions) -> cluster_pb2.Cluster:
    out = _static(ADMIN, options)
    address = options.admin_address
    if address in ("0.0.0.0", "::"):
        address = "127.0.0.1" if address == "0.0.0.0" else "::1"
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=socket_address(address, options.admin_port)
        )
    )
    out.load_assignment.CopyFrom(_load_assignment(ADMIN, [endpoint]))
    return out

"""Listeners: the HBONE listener (or, behind Istio's ztunnel sandwich, the PROXY protocol
listener), one internal listener per destination port, HBONE origination, and the readiness
and Prometheus listeners."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2

from waypoint import model, names
from waypoint.envoy import (
    clusters,
    filters,
    policies,
    protos,
    rbac,
    routes,
    secrets,
    tracing,
    traffic,
)
from waypoint.envoy import options as options_mod

READINESS_PATH = "/healthz/ready"
STATS_PATH = "/stats/prometheus"
ORIGINAL_DST = "envoy.filters.listener.original_dst"


def build(
    waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> list[listener_pb2.Listener]:
    out = [front(waypoint, options)]
    lbs = traffic.load_balancers(waypoint)
    td = waypoint.identity.trust_domain
    service = f"{waypoint.name}.{waypoint.namespace}"  # the tracing service name
    if waypoint.proxy_port is None:  # the sandwich serves destinations in its own chains
        out += [
            inbound(dest, td, options, lbs, service, waypoint.jwt_providers)
            for dest in waypoint.destinations
        ]
    out += [
        connect_originate(target.name, access_log=options.access_log)
        for target in clusters.originate_targets(waypoint)
    ]
    out += [readiness(options), stats(options)]
    return sorted(out, key=lambda listener: listener.name)


def front(waypoint: model.Waypoint, options: options_mod.BootstrapOptions) -> listener_pb2.Listener:
    """Where ztunnel's connections arrive: HBONE, or PROXY v2 for a sandwiched waypoint."""
    if waypoint.proxy_port is None:
        return connect_terminate(waypoint, options)
    return proxy_terminate(waypoint, options)


def proxy_terminate(
    waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> listener_pb2.Listener:
    """Istio's sandwich: ztunnel has terminated HBONE and opens plain TCP to us, starting with
    a PROXY v2 header whose destination is the CONNECT authority (``VIP:port``).

    The listener filter restores that destination as the local address, so one filter chain
    per destination port (matched on its addresses and port) serves it with exactly the
    filters of the HBONE path's internal listener; a destination we do not serve matches no
    chain and the connection is closed. Each chain first copies the header's identity TLV into
    the source principal. The chains hold those filters directly rather than forwarding to
    the internal listeners: measured with Envoy 1.40, a TCP proxy into an internal listener
    loses the response when the inner HTTP connection manager closes first (a client's
    ``Connection: close``), and the hop would cost a second pass for nothing.
    """
    port = options.proxy_port or waypoint.proxy_port or 0
    out = listener_pb2.Listener(
        name=names.PROXY_TERMINATE,
        address=clusters.socket_address(options.bind, port),
        # listener.proxy_terminate.no_filter_chain_match counts unknown destinations.
        stat_prefix=names.PROXY_TERMINATE,
    )
    out.listener_filters.append(filters.proxy_protocol())
    lbs = traffic.load_balancers(waypoint)
    td = waypoint.identity.trust_domain
    service = f"{waypoint.name}.{waypoint.namespace}"
    # Without an address a chain would match the port on every address: leave it out.
    served = [dest for dest in waypoint.destinations if dest.addresses]
    for dest in sorted(served, key=_first_authority):
        chain = out.filter_chains.add(name=routes.inbound_name(dest))
        chain.filter_chain_match.destination_port.value = dest.port
        chain.filter_chain_match.prefix_ranges.extend(_host_range(a) for a in dest.addresses)
        chain.filters.append(filters.set_proxy_principal(rbac.uses_source_address(waypoint)))
        chain.filters.extend(
            inbound_filters(dest, td, options, lbs, service, waypoint.jwt_providers)
        )
    return out


def _first_authority(destination: model.Destination) -> str:
    return min(names.authority(a, destination.port) for a in destination.addresses)


def _host_range(address: str) -> address_pb2.CidrRange:
    return address_pb2.CidrRange(
        address_prefix=address, prefix_len=protos.uint32(128 if ":" in address else 32)
    )


def connect_terminate(
    waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> listener_pb2.Listener:
    """HBONE: mTLS 1.3 from our trust domain, HTTP/2 CONNECT dispatched on the authority."""
    hcm = filters.connect_terminate_hcm(
        names.CONNECT_TERMINATE,
        routes.connect_route_config(waypoint),
        options,
        source_address=rbac.uses_source_address(waypoint),
    )
    chain = listener_components_pb2.FilterChain(
        filters=[filters.hcm_filter(hcm)], transport_socket=secrets.downstream_tls(options)
    )
    return listener_pb2.Listener(
        name=names.CONNECT_TERMINATE,
        address=clusters.socket_address(options.bind, options.hbone_port),
        filter_chains=[chain],
    )


def _internal(name: str) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name, internal_listener=listener_pb2.Listener.InternalListenerConfig()
    )


def inbound(
    destination: model.Destination,
    trust_domain: str,
    options: options_mod.BootstrapOptions | None = None,
    lbs: Mapping[str, model.LoadBalancer] | None = None,
    service: str = "waypoint",
    providers: Sequence[model.JwtProvider] = (),
) -> listener_pb2.Listener:
    """What a tunnel to one destination port carries: HTTP through the routes, or bytes."""
    out = _internal(routes.inbound_name(destination))
    chain = inbound_filters(destination, trust_domain, options, lbs, service, providers)
    out.filter_chains.append(listener_components_pb2.FilterChain(filters=chain))
    return out


def inbound_filters(
    destination: model.Destination,
    trust_domain: str,
    options: options_mod.BootstrapOptions | None = None,
    lbs: Mapping[str, model.LoadBalancer] | None = None,
    service: str = "waypoint",
    providers: Sequence[model.JwtProvider] = (),
) -> list[listener_components_pb2.Filter]:
    """What serves one destination port, on the HBONE path's internal listener and in the
    sandwich's filter chain alike: a network filter added here reaches both.

    A TCP port gets Istio's AuthorizationPolicy as network RBAC filters before its proxy."""
    terminal = _terminal_filter(destination, trust_domain, options, lbs, service, providers)
    if destination.protocol.is_http:
        return [terminal]
    return [*rbac.network_filters(destination, routes.inbound_name(destination)), terminal]


def _terminal_filter(
    destination: model.Destination,
    trust_domain: str,
    options: options_mod.BootstrapOptions | None = None,
    lbs: Mapping[str, model.LoadBalancer] | None = None,
    service: str = "waypoint",
    providers: Sequence[model.JwtProvider] = (),
) -> listener_components_pb2.Filter:
    """The Service port's HTTP connection manager with its routes, or a TCP proxy."""
    name = routes.inbound_name(destination)
    options = options or options_mod.BootstrapOptions()
    if not destination.protocol.is_http:
        return filters.tcp_proxy(name, destination.default_cluster, access_log=options.access_log)
    route_config = routes.destination_route_config(destination, trust_domain, lbs)
    hcm = filters.http_connection_manager(
        name,
        route_config,
        policies.http_filters(destination, providers),
        access_log=options.access_log,
        authz_log=bool(destination.authorization),
    )
    # Spans and request ids belong to the requests inside a tunnel, not to the tunnel.
    tracing.patch_hcm(hcm, options, service)
    return filters.hcm_filter(hcm)


def connect_originate(name: str, *, access_log: bool) -> listener_pb2.Listener:
    """Wrap a connection in an HBONE tunnel to the endpoint named by its metadata.

    The original_dst listener filter turns the endpoint's passed-through metadata into the
    local address, which is both where the tunnel goes and its CONNECT authority.
    """
    out = _internal(name)
    out.listener_filters.append(
        listener_components_pb2.ListenerFilter(
            name=ORIGINAL_DST, typed_config=protos.pack(original_dst_pb2.OriginalDst())
        )
    )
    proxy = filters.tcp_proxy(name, name, "%DOWNSTREAM_LOCAL_ADDRESS%", access_log=access_log)
    out.filter_chains.append(listener_components_pb2.FilterChain(filters=[proxy]))
    return out


def _admin_proxy(
    name: str, address: str, port: int, match: rc_pb2.RouteMatch, rewrite: str | None
) -> listener_pb2.Listener:
    """A plain HTTP listener forwarding one path to the admin interface."""
    action = rc_pb2.RouteAction(cluster=clusters.ADMIN)
    if rewrite is not None:
        action.prefix_rewrite = rewrite
    vhost = rc_pb2.VirtualHost(
        name=name, domains=["*"], routes=[rc_pb2.Route(name=name, match=match, route=action)]
    )
    route_config = route_pb2.RouteConfiguration(name=name, virtual_hosts=[vhost])
    # Never logged: probes every few seconds would drown the request log.
    hcm = filters.http_connection_manager(name, route_config, [filters.router()], access_log=False)
    return listener_pb2.Listener(
        name=name,
        address=clusters.socket_address(address, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[filters.hcm_filter(hcm)])],
    )


def readiness(options: options_mod.BootstrapOptions) -> listener_pb2.Listener:
    """``GET /healthz/ready`` answers what the admin ``/ready`` says (200 LIVE or 503)."""
    match = rc_pb2.RouteMatch(path=READINESS_PATH)
    return _admin_proxy(names.READINESS, options.bind, options.readiness_port, match, "/ready")


def stats(options: options_mod.BootstrapOptions) -> listener_pb2.Listener:
    match = rc_pb2.RouteMatch(path=STATS_PATH)
    return _admin_proxy(names.STATS, options.bind, options.stats_port, match, None)

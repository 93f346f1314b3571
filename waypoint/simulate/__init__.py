"""Offline simulation of one request through a waypoint's generated Envoy config.

``trace(resources_or_bootstrap, Request(...))`` walks the hops Envoy would take, reading only
the xDS resources we generate (never the IR), so what it predicts is what the config does:

1. ``connect_terminate``: mTLS admits the client's SPIFFE ID (or not), then the HTTP/2
   CONNECT is routed on its exact ``:authority`` (``VIP:port``); no route means 404.
2. The CONNECT route's cluster leads to an internal listener (``inbound-vip|port|host``).
3. HTTP: path normalisation and port stripping, virtual host, then the first route whose
   match takes the request (see ``matching``); the client's SPIFFE ID is the
   ``io.waypoint.source_principal`` filter state consumer routes match on. TCP: the proxy's
   cluster.
4. The action: weighted clusters with their shares, a redirect with its ``Location``, a
   direct response, or a forward with the rewritten path, host and headers.
5. Each upstream cluster's endpoints: a socket address, or an HBONE tunnel through a
   ``connect_originate`` listener to ``ip:<hbone port>`` with authority ``ip:targetPort``.

6. Istio authentication and authorization (``authz``): jwt_authn's verdict on the token and
   the RBAC filters' matching policies; their 401/403 comes before any route's answer.

Load balancing, health, retries, timeouts and the other policy filters (ext_authz, fault,
rate limit) are not simulated; the trace names the filters a route turns on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from waypoint import names
from waypoint.envoy import clusters as clusters_mod
from waypoint.envoy import filters
from waypoint.simulate import authz as authz_mod
from waypoint.simulate import config, matching, rewriting

ConfigError = config.ConfigError
UnsupportedConfig = matching.UnsupportedConfig
_NO_CLUSTER_STATUS = {
    rc_pb2.RouteAction.SERVICE_UNAVAILABLE: 503,
    rc_pb2.RouteAction.NOT_FOUND: 404,
    rc_pb2.RouteAction.INTERNAL_SERVER_ERROR: 500,
}


@dataclasses.dataclass(frozen=True)
class Request:
    """One request a client sends through its tunnel.

    ``authority`` is the CONNECT authority (``VIP:port`` or ``podIP:port``); ``host`` the Host
    header inside the tunnel (default: the authority); ``source_principal`` the client's
    SPIFFE ID (its certificate's URI SAN).
    """

    authority: str
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    source_principal: str | None = None
    host: str | None = None
    source_address: str | None = None  # the client's IP (AuthorizationPolicy ipBlocks)
    now: float | None = None  # the clock for token expiry; None: the current time


@dataclasses.dataclass(frozen=True)
class RouteCheck:
    """A route considered, in order; ``reason`` says why it did not match ("" if it did)."""

    name: str
    matched: bool
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Connect:
    """The HBONE hop: was the peer admitted, which route and cluster took the CONNECT."""

    listener: str
    peer_accepted: bool
    route: str | None
    cluster: str | None
    status: int  # 200: tunnel established; 404: no route; 0: TLS refused
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One upstream endpoint: a socket address, or an HBONE tunnel to one."""

    address: str
    hbone: bool = False
    via: str | None = None  # the connect_originate listener
    tunnel_to: str | None = None  # ip:<upstream hbone port>
    peer: str | None = None  # the SPIFFE ID (or ``prefix*``) the tunnel's peer must have


@dataclasses.dataclass(frozen=True)
class Forwarded:
    """The request as the upstream receives it (route-configured changes only)."""

    path: str
    host: str
    headers: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Upstream:
    cluster: str
    weight: int | None  # None: the only cluster
    share: float  # fraction of requests, 0..1
    exists: bool
    endpoints: tuple[Endpoint, ...]
    request: Forwarded | None = None  # None for TCP
    header_changes: tuple[str, ...] = ()  # this backend's own request header mutations


@dataclasses.dataclass(frozen=True)
class Action:
    """What the chosen route (or TCP proxy) does."""

    kind: str  # forward | redirect | direct_response | tcp_proxy
    status: int | None = None  # redirect/direct status; None when an upstream answers
    location: str | None = None
    body: str | None = None
    upstreams: tuple[Upstream, ...] = ()
    path_rewrite: str | None = None  # the path after rewriting, when it changed
    host_rewrite: str | None = None
    header_changes: tuple[str, ...] = ()  # the route's request header mutations
    response_header_changes: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    timeout_seconds: float | None = None  # the route timeout; None: none
    retry: str | None = None  # "N retries on <conditions>"
    policies: tuple[str, ...] = ()  # HTTP filters the route turns on (ext_authz, fault, ...)


@dataclasses.dataclass(frozen=True)
class Trace:
    request: Request
    connect: Connect
    listener: str | None = None
    protocol: str | None = None  # http | tcp
    virtual_host: str | None = None
    checks: tuple[RouteCheck, ...] = ()
    route: str | None = None
    action: Action | None = None
    status: int | None = None  # the response status Envoy itself makes, if it makes one
    rejected: str = ""  # why the HCM refused the request before routing, if it did
    authz: authz_mod.Verdict | None = None  # jwt_authn and RBAC, when the destination has them

    @property
    def route_ref(self) -> names.RouteName | None:
        """The route name parsed back into kind/namespace/name/rule/match, when it is one."""
        if self.route is None:
            return None
        try:
            return names.parse_route_name(self.route)
        except ValueError:
            return None

    @property
    def clusters(self) -> tuple[str, ...]:
        """Upstream clusters that can receive the request (weight > 0)."""
        if self.action is None:
            return ()
        return tuple(u.cluster for u in self.action.upstreams if u.share > 0)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dataclasses.asdict(self)
        ref = self.route_ref
        data["route_ref"] = dataclasses.asdict(ref) if ref is not None else None
        return data


def trace(source: config.Source, request: Request) -> Trace:
    """Walk ``request`` through the config; raise ConfigError/UnsupportedConfig on bad config."""
    index = config.Index.of(source)
    if names.PROXY_TERMINATE in index.listeners:
        raise UnsupportedConfig(
            "this waypoint sits behind ztunnel's PROXY sandwich (listener "
            f"{names.PROXY_TERMINATE}); explain follows the HBONE path only"
        )
    connect = _connect(index, request)
    if connect.cluster is None:
        return Trace(request, connect, status=connect.status or None)
    listener_name = _internal_listener(index, connect.cluster)
    network = index.network_filter(index.listener(listener_name))
    if isinstance(network, tcp_proxy_pb2.TcpProxy):
        action = _tcp(index, network)
        traced = Trace(request, connect, listener_name, "tcp", action=action)
        return _tcp_authorized(traced, index.listener(listener_name), request)
    traced = _http(index, request, connect, listener_name, index.route_config(network))
    return _authorized(traced, network, request)


def _filter_state(request: Request) -> dict[str, str]:
    state = {}
    if request.source_principal is not None:
        state[filters.SOURCE_PRINCIPAL_KEY] = request.source_principal
    if request.source_address is not None:
        state[filters.SOURCE_ADDRESS_KEY] = request.source_address
    return state


def _tcp_authorized(traced: Trace, listener: listener_pb2.Listener, request: Request) -> Trace:
    """The network RBAC filters before a TCP proxy; a denied connection is closed (shown as
    403, the verdict of the filter that closes it)."""
    verdict = authz_mod.evaluate_network(
        list(listener.filter_chains[0].filters), _filter_state(request)
    )
    if verdict is None:
        return traced
    if verdict.status is not None:
        return dataclasses.replace(traced, authz=verdict, status=verdict.status)
    return dataclasses.replace(traced, authz=verdict)


def _authorized(traced: Trace, hcm: hcm_pb2.HttpConnectionManager, request: Request) -> Trace:
    """Apply the authentication and authorization filters, which run before the router: a
    401 or 403 from them is the answer whatever the route would have done."""
    if traced.rejected:
        return traced
    state = _filter_state(request)
    host = matching.strip_port(request.host or request.authority)
    headers = ((":authority", host), *((k.lower(), v) for k, v in request.headers))
    path = matching.normalize_path(request.path)
    verdict = authz_mod.evaluate(hcm, request.method, path, headers, state, request.now)
    if verdict is None:
        return traced
    if verdict.status is not None:
        return dataclasses.replace(traced, authz=verdict, status=verdict.status)
    return dataclasses.replace(traced, authz=verdict)


# --- the HBONE hop -------------------------------------------------------------------------


def _peer_check(index: config.Index, request: Request) -> str:
    listener = index.listener(names.CONNECT_TERMINATE)
    tls = config.downstream_tls(listener)
    matchers = config.peer_matchers(tls) if tls is not None else ()
    if not matchers:
        return ""
    if request.source_principal is None:
        return ""  # unknown client: assume it is admitted, and say so in the output
    if any(matching.string_matches(m, request.source_principal) for m in matchers):
        return ""
    wanted = " or ".join(matching.describe_string(m) for m in matchers)
    return f"client certificate URI SAN {request.source_principal!r} is not {wanted}"


def _connect(index: config.Index, request: Request) -> Connect:
    refused = _peer_check(index, request)
    if refused:
        return Connect(names.CONNECT_TERMINATE, False, None, None, 0, refused)
    hcm = index.network_filter(index.listener(names.CONNECT_TERMINATE))
    if isinstance(hcm, tcp_proxy_pb2.TcpProxy):
        raise UnsupportedConfig(f"{names.CONNECT_TERMINATE} is a TCP proxy, not an HCM")
    route_config = index.route_config(hcm)
    headers = [(":authority", request.authority), (":method", "CONNECT")]
    vhost = matching.virtual_host(route_config.virtual_hosts, request.authority)
    for route in vhost.routes if vhost is not None else ():
        if matching.route_matcher(route.match, "CONNECT", "", headers, {}) is None:
            if not route.HasField("route") or route.route.WhichOneof("cluster_specifier") != (
                "cluster"
            ):
                raise UnsupportedConfig(f"CONNECT route {route.name} does not name one cluster")
            return Connect(names.CONNECT_TERMINATE, True, route.name, route.route.cluster, 200)
    reason = f"no CONNECT route for authority {request.authority!r}"
    return Connect(names.CONNECT_TERMINATE, True, None, None, 404, reason)


def _internal_listener(index: config.Index, cluster_name: str) -> str:
    cluster = index.clusters.get(cluster_name)
    if cluster is None:
        raise config.ConfigError(f"CONNECT route names cluster {cluster_name!r}, not found")
    for lb in _lb_endpoints(cluster):
        address = lb.endpoint.address
        if address.HasField("envoy_internal_address"):
            return str(address.envoy_internal_address.server_listener_name)
    raise config.ConfigError(f"cluster {cluster_name} has no internal listener endpoint")


# --- the internal listener -----------------------------------------------------------------


def _http(
    index: config.Index,
    request: Request,
    connect: Connect,
    listener: str,
    route_config: route_pb2.RouteConfiguration,
) -> Trace:
    host = matching.strip_port(request.host or request.authority)
    path = matching.normalize_path(request.path)
    headers = (
        (":authority", host),
        (":method", request.method),
        (":path", path),
        (":scheme", "http"),
        *((k.lower(), v) for k, v in request.headers),
    )
    state = {}
    if request.source_principal is not None:
        state[filters.SOURCE_PRINCIPAL_KEY] = request.source_principal
    base = Trace(request, connect, listener, "http")
    if "#" in request.path:
        return dataclasses.replace(base, status=400, rejected="the path has a fragment (#)")
    vhost = matching.virtual_host(route_config.virtual_hosts, host)
    if vhost is None:
        return dataclasses.replace(base, status=404)
    checks = []
    for route in vhost.routes:
        reason = matching.route_matcher(route.match, request.method, path, headers, state)
        checks.append(RouteCheck(route.name, reason is None, reason or ""))
        if reason is None:
            action = _route_action(index, route, host, path, headers)
            return dataclasses.replace(
                base,
                virtual_host=vhost.name,
                checks=tuple(checks),
                route=route.name,
                action=action,
                status=action.status,
            )
    return dataclasses.replace(base, virtual_host=vhost.name, checks=tuple(checks), status=404)


def _route_action(
    index: config.Index,
    route: rc_pb2.Route,
    host: str,
    path: str,
    headers: tuple[tuple[str, str], ...],
) -> Action:
    kind = route.WhichOneof("action")
    if kind == "redirect":
        status = rewriting.REDIRECT_STATUS[route.redirect.response_code]
        where = rewriting.location(route.redirect, route.match, host, path)
        action = Action("redirect", status=status, location=where)
    elif kind == "direct_response":
        body = route.direct_response.body.inline_string or None
        action = Action("direct_response", status=route.direct_response.status, body=body)
    elif kind == "route":
        action = _forward(index, route, host, path, headers)
    else:
        raise UnsupportedConfig(f"route {route.name}: action {kind!r} is not supported")
    return dataclasses.replace(
        action,
        response_header_changes=rewriting.describe_mutations(
            route.response_headers_to_add, route.response_headers_to_remove
        ),
        policies=tuple(sorted(route.typed_per_filter_config)),
    )


def _forward(
    index: config.Index,
    route: rc_pb2.Route,
    host: str,
    path: str,
    headers: tuple[tuple[str, str], ...],
) -> Action:
    action = route.route
    regex = action.regex_rewrite if action.HasField("regex_rewrite") else None
    new_path = rewriting.rewrite_path(route.match, path, action.prefix_rewrite, regex)
    new_host = action.host_rewrite_literal or host
    plain = tuple((k, v) for k, v in headers if not k.startswith(":"))
    targets = _targets(action)
    total = sum(_weight(weight) for _, weight, _ in targets)
    upstreams = []
    for name, weight, cluster_weight in targets:
        changes: tuple[str, ...] = ()
        backend_headers = plain
        if cluster_weight is not None:
            to_add = cluster_weight.request_headers_to_add
            to_remove = cluster_weight.request_headers_to_remove
            backend_headers = rewriting.mutate(plain, to_add, to_remove)
            changes = rewriting.describe_mutations(to_add, to_remove)
        backend_headers = rewriting.mutate(
            backend_headers, route.request_headers_to_add, route.request_headers_to_remove
        )
        forwarded = Forwarded(new_path, new_host, backend_headers)
        share = _weight(weight) / total if total else 0.0
        upstreams.append(_upstream(index, name, weight, share, forwarded, changes))
    return Action(
        "forward",
        upstreams=tuple(upstreams),
        path_rewrite=new_path if new_path != path else None,
        host_rewrite=action.host_rewrite_literal or None,
        header_changes=rewriting.describe_mutations(
            route.request_headers_to_add, route.request_headers_to_remove
        ),
        mirrors=tuple(p.cluster for p in action.request_mirror_policies),
        timeout_seconds=_seconds(action) if action.HasField("timeout") else None,
        retry=_retry(action),
        status=_missing_cluster_status(action, upstreams),
    )


def _seconds(action: rc_pb2.RouteAction) -> float | None:
    seconds = float(action.timeout.seconds) + action.timeout.nanos / 1e9
    return seconds or None  # 0 disables the timeout


def _retry(action: rc_pb2.RouteAction) -> str | None:
    if not action.HasField("retry_policy"):
        return None
    policy = action.retry_policy
    count = policy.num_retries.value if policy.HasField("num_retries") else 1
    return f"{count} retries on {policy.retry_on}"


def _weight(weight: int | None) -> int:
    return 1 if weight is None else weight


def _targets(
    action: rc_pb2.RouteAction,
) -> list[tuple[str, int | None, rc_pb2.WeightedCluster.ClusterWeight | None]]:
    kind = action.WhichOneof("cluster_specifier")
    if kind == "cluster":
        return [(action.cluster, None, None)]
    if kind == "weighted_clusters":
        return [(c.name, c.weight.value, c) for c in action.weighted_clusters.clusters]
    raise UnsupportedConfig(f"route action cluster specifier {kind!r} is not supported")


def _missing_cluster_status(
    action: rc_pb2.RouteAction, upstreams: Sequence[Upstream]
) -> int | None:
    """A status Envoy makes for sure: every cluster that can be picked is missing or empty.

    A missing cluster gets ``cluster_not_found_response_code`` (503 unless set), an empty one
    503 (no healthy upstream). When only some picks fail, the status depends on the pick.
    """
    live = [u for u in upstreams if u.share > 0]
    if not live:
        return None
    if all(not u.exists for u in live):
        return _NO_CLUSTER_STATUS.get(action.cluster_not_found_response_code, 503)
    if all(not u.endpoints for u in live):
        return 503
    return None


# --- upstream clusters ---------------------------------------------------------------------


def _lb_endpoints(cluster: cluster_pb2.Cluster) -> list[endpoint_components_pb2.LbEndpoint]:
    return [lb for group in cluster.load_assignment.endpoints for lb in group.lb_endpoints]


def _upstream(
    index: config.Index,
    name: str,
    weight: int | None,
    share: float,
    forwarded: Forwarded | None,
    changes: tuple[str, ...] = (),
) -> Upstream:
    cluster = index.clusters.get(name)
    if cluster is None:
        return Upstream(name, weight, share, False, (), forwarded, changes)
    endpoints = tuple(_endpoint(index, lb) for lb in _lb_endpoints(cluster))
    return Upstream(name, weight, share, True, endpoints, forwarded, changes)


def _endpoint(index: config.Index, lb: endpoint_components_pb2.LbEndpoint) -> Endpoint:
    address = lb.endpoint.address
    if address.HasField("socket_address"):
        socket = address.socket_address
        return Endpoint(names.authority(socket.address, socket.port_value))
    internal = address.envoy_internal_address
    metadata = lb.metadata.filter_metadata.get(clusters_mod.ORIGINAL_DST_METADATA)
    authority = metadata.fields["local"].string_value if metadata is not None else ""
    originate = index.clusters.get(internal.server_listener_name)
    if originate is None or not authority:
        return Endpoint(f"internal:{internal.server_listener_name}")
    host, _ = names.parse_authority(authority)
    port = originate.original_dst_lb_config.upstream_port_override.value
    tls = config.upstream_tls(originate)
    matchers = config.peer_matchers(tls) if tls is not None else ()
    peer = " or ".join(_peer_text(m) for m in matchers) or None
    return Endpoint(
        authority,
        hbone=True,
        via=internal.server_listener_name,
        tunnel_to=names.authority(host, port) if port else None,
        peer=peer,
    )


def _peer_text(matcher: Any) -> str:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "exact":
        return str(matcher.exact)
    if kind == "prefix":
        return f"{matcher.prefix}*"
    return matching.describe_string(matcher)


def _tcp(index: config.Index, proxy: tcp_proxy_pb2.TcpProxy) -> Action:
    kind = proxy.WhichOneof("cluster_specifier")
    if kind == "cluster":
        upstreams = [_upstream(index, proxy.cluster, None, 1.0, None)]
    else:
        clusters = proxy.weighted_clusters.clusters
        total = sum(c.weight for c in clusters) or 1
        upstreams = [_upstream(index, c.name, c.weight, c.weight / total, None) for c in clusters]
    return Action("tcp_proxy", upstreams=tuple(upstreams))

"""Route configurations: CONNECT dispatch on the HBONE listener, and Gateway API L7 routes.

Each destination port gets one virtual host with ``domains: ["*"]``: GAMMA routes select by
the Service a client dialled (the CONNECT authority), never by the Host header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import filter_state_pb2, regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from waypoint import model, names
from waypoint.envoy import filters, policies, protos, traffic

# A weighted-cluster name no cluster ever has: an unresolved backendRef's share of traffic
# goes there and gets cluster_not_found_response_code (500), as the Gateway API requires.
UNRESOLVED_BACKEND = "waypoint_unresolved_backend"
_REDIRECT_CODES = {
    301: rc_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: rc_pb2.RedirectAction.FOUND,
    303: rc_pb2.RedirectAction.SEE_OTHER,
    307: rc_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: rc_pb2.RedirectAction.PERMANENT_REDIRECT,
}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_RETRY_ON = "connect-failure,refused-stream,reset"


def host_ref(destination: model.Destination) -> names.HostRef:
    kind = "svc" if destination.kind is model.DestinationKind.SERVICE else "pod"
    return names.HostRef(kind, destination.namespace, destination.name)


def inbound_name(destination: model.Destination) -> str:
    """The internal listener (and cluster) serving one destination port."""
    return names.inbound_listener(host_ref(destination), destination.port)


# --- the HBONE listener: CONNECT authority → internal listener ----------------------------


def connect_route_config(waypoint: model.Waypoint) -> route_pb2.RouteConfiguration:
    """One route per ``VIP:port`` authority; anything else falls through to 404."""
    targets = sorted(
        (
            (names.authority(address, dest.port), inbound_name(dest))
            for dest in waypoint.destinations
            for address in dest.addresses
        ),
        key=_authority,
    )
    config = route_pb2.RouteConfiguration(name=names.CONNECT_TERMINATE)
    vhost = config.virtual_hosts.add(name=names.CONNECT_TERMINATE, domains=["*"])
    # Filled in place: a message passed to a constructor is copied, once per nesting level.
    for authority, cluster in targets:
        _connect_route(vhost.routes.add(), authority, cluster)
    return config


def _authority(target: tuple[str, str]) -> str:
    return target[0]


def _connect_route(out: rc_pb2.Route, authority: str, cluster: str) -> None:
    out.name = authority
    out.match.connect_matcher.SetInParent()
    header = out.match.headers.add(name=":authority")
    header.string_match.exact = authority
    out.route.cluster = cluster
    out.route.timeout.SetInParent()
    upgrade = out.route.upgrade_configs.add(upgrade_type="CONNECT")
    upgrade.connect_config.SetInParent()


# --- a destination's L7 routes -------------------------------------------------------------


def destination_route_config(
    destination: model.Destination,
    trust_domain: str,
    lbs: Mapping[str, model.LoadBalancer] | None = None,
) -> route_pb2.RouteConfiguration:
    """``lbs``: load balancers by cluster name, for consistent-hash routes."""
    name = inbound_name(destination)
    consumer = [r for r in destination.routes if r.consumer_namespace is not None]
    producer = [r for r in destination.routes if r.consumer_namespace is None]
    routes = [route(r, destination, trust_domain, lbs) for r in consumer]
    routes += _consumer_fallthrough(destination, trust_domain)
    routes += [route(r, destination, trust_domain, lbs) for r in producer]
    if not routes:
        routes = [default_route(destination, lbs)]
    # Dot-free, so Envoy's tag extraction keeps the whole name as the virtual_host tag and
    # the per-route stats get fixed metric names (vhost.<vhost>.route.<route>.*).
    vhost = rc_pb2.VirtualHost(name=filters.stat_prefix(name), domains=["*"], routes=routes)
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[vhost],
        # Unresolved backends name clusters that do not exist, on purpose (see above).
        validate_clusters=protos.boolean(False),
    )


def _consumer_fallthrough(destination: model.Destination, trust_domain: str) -> list[rc_pb2.Route]:
    """GAMMA consumer routes replace producer routes for clients of their namespace.

    So after a namespace's consumer routes comes a 404 for the rest of its requests
    (``consumer-default/<consumer ns>/<service>/<port>/0``), before any producer route.
    With consumer routes and no producer route, other clients keep the default route.
    """
    namespaces = sorted({r.consumer_namespace for r in destination.routes if r.consumer_namespace})
    out = []
    for namespace in namespaces:
        match = rc_pb2.RouteMatch(prefix="/")
        match.filter_state.append(_consumer_matcher(namespace, trust_domain))
        name = names.route_name(
            "consumer-default", namespace, destination.name, destination.port, 0
        )
        out.append(
            rc_pb2.Route(
                name=name, match=match, direct_response=rc_pb2.DirectResponseAction(status=404)
            )
        )
    if namespaces and all(r.consumer_namespace for r in destination.routes):
        out.append(default_route(destination))
    return out


def default_route(
    destination: model.Destination, lbs: Mapping[str, model.LoadBalancer] | None = None
) -> rc_pb2.Route:
    """Everything to the destination's own endpoints (a Service with no route attached)."""
    action = rc_pb2.RouteAction(cluster=destination.default_cluster, timeout=protos.duration(0))
    traffic.apply_hashing(action, [destination.default_cluster], lbs or {})
    name = names.default_route_name(host_ref(destination), destination.port)
    out = rc_pb2.Route(
        name=name,
        match=rc_pb2.RouteMatch(prefix="/"),
        route=action,
        stat_prefix=filters.stat_prefix(name),
    )
    if not destination.routes:
        policies.apply_route(out, destination.policy, destination)
    return out


def route(
    r: model.Route,
    destination: model.Destination,
    trust_domain: str,
    lbs: Mapping[str, model.LoadBalancer] | None = None,
) -> rc_pb2.Route:
    """One Gateway API (rule, match) as an Envoy route, with its policies.

    ``stat_prefix`` gives each route Envoy's per-route request, status-code and latency
    stats (``vhost.<vhost>.route.<prefix>.*``): RED metrics on the Prometheus port.
    """
    _check(r)
    out = rc_pb2.Route(
        name=r.name, match=route_match(r.match), stat_prefix=filters.stat_prefix(r.name)
    )
    if r.consumer_namespace is not None:
        out.match.filter_state.append(_consumer_matcher(r.consumer_namespace, trust_domain))
    _modify_headers(out, r.request_headers, r.response_headers)
    if r.direct_status is not None:
        out.direct_response.status = r.direct_status
    elif r.redirect is not None:
        out.redirect.CopyFrom(redirect(r.redirect, r.match.path, destination.port))
    else:
        _forward(out, r)
        clusters = [b.cluster for b in r.backends if b.cluster]
        traffic.apply_hashing(out.route, clusters, lbs or {})
    policies.apply_route(out, r.policy, destination)
    return out


def _check(r: model.Route) -> None:
    """Reject what Envoy would refuse, naming the route, instead of failing the whole config."""
    path = r.match.path
    if path is not None and path.type is not model.MatchType.REGEX and not _plain_path(path.value):
        raise ValueError(f"route {r.name}: path {path.value!r} must start with / (no ? or #)")
    if r.redirect is not None and r.redirect.status_code not in _REDIRECT_CODES:
        raise ValueError(f"route {r.name}: unsupported redirect status {r.redirect.status_code}")
    if r.direct_status is not None and not 200 <= r.direct_status <= 599:
        raise ValueError(f"route {r.name}: direct status {r.direct_status} is not 200-599")
    for mirror in r.mirrors:
        if not 0 <= mirror.percent <= 100:
            raise ValueError(f"route {r.name}: mirror percent {mirror.percent} not in 0-100")


def _plain_path(value: str) -> bool:
    return value.startswith("/") and not any(c in value for c in "?#")


def _consumer_matcher(namespace: str, trust_domain: str) -> filter_state_pb2.FilterStateMatcher:
    prefix = f"spiffe://{trust_domain}/ns/{namespace}/"
    return filter_state_pb2.FilterStateMatcher(
        key=filters.SOURCE_PRINCIPAL_KEY, string_match=string_pb2.StringMatcher(prefix=prefix)
    )


# --- matches -------------------------------------------------------------------------------


def route_match(m: model.RouteMatch) -> rc_pb2.RouteMatch:
    out = rc_pb2.RouteMatch()
    _path_match(out, m.path)
    for header in m.headers:
        out.headers.append(_header_matcher(header.name.lower(), _string_match(header)))
    if m.method is not None:
        out.headers.append(_header_matcher(":method", string_pb2.StringMatcher(exact=m.method)))
    for query in m.query:
        out.query_parameters.append(
            rc_pb2.QueryParameterMatcher(name=query.name, string_match=_string_match(query))
        )
    return out


def _path_match(out: rc_pb2.RouteMatch, path: model.PathMatch | None) -> None:
    if path is None:
        out.prefix = "/"
    elif path.type is model.MatchType.EXACT:
        out.path = path.value
    elif path.type is model.MatchType.REGEX:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=path.value))
    elif path.value.rstrip("/") == "":
        out.prefix = "/"
    else:
        # "/foo" matches /foo and /foo/bar but not /foobar, as Gateway API's PathPrefix does.
        out.path_separated_prefix = path.value.rstrip("/")


def _string_match(value: model.ValueMatch) -> string_pb2.StringMatcher:
    if value.type is model.MatchType.REGEX:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=value.value))
    return string_pb2.StringMatcher(exact=value.value)


def _header_matcher(name: str, match: string_pb2.StringMatcher) -> rc_pb2.HeaderMatcher:
    return rc_pb2.HeaderMatcher(name=name, string_match=match)


# --- actions -------------------------------------------------------------------------------


def _forward(out: rc_pb2.Route, r: model.Route) -> None:
    backends = [b for b in r.backends if b.weight > 0]
    if not any(b.cluster for b in backends):
        out.direct_response.status = 500
        return
    action = out.route
    single = backends[0] if len(backends) == 1 else None
    if single is not None and single.request_headers is None and single.response_headers is None:
        assert single.cluster is not None
        action.cluster = single.cluster
    else:
        action.weighted_clusters.CopyFrom(_weighted(backends))
        action.cluster_not_found_response_code = rc_pb2.RouteAction.INTERNAL_SERVER_ERROR
    _timeouts(action, r.timeouts, r.retry)
    if r.retry is not None:
        action.retry_policy.CopyFrom(_retry(r.retry, r.timeouts))
    if r.rewrite is not None:
        _rewrite(action, r.rewrite, r.match.path)
    for mirror in r.mirrors:
        action.request_mirror_policies.append(_mirror(mirror))


def _weighted(backends: list[model.WeightedBackend]) -> rc_pb2.WeightedCluster:
    out = rc_pb2.WeightedCluster()
    for backend in backends:
        weight = rc_pb2.WeightedCluster.ClusterWeight(
            name=backend.cluster or UNRESOLVED_BACKEND, weight=protos.uint32(backend.weight)
        )
        _modify_headers(weight, backend.request_headers, backend.response_headers)
        out.clusters.append(weight)
    return out


def _modify_headers(
    target: rc_pb2.Route | rc_pb2.WeightedCluster.ClusterWeight,
    request: model.HeaderModifier | None,
    response: model.HeaderModifier | None,
) -> None:
    if request is not None:
        target.request_headers_to_add.extend(_header_options(request))
        target.request_headers_to_remove.extend(request.remove)
    if response is not None:
        target.response_headers_to_add.extend(_header_options(response))
        target.response_headers_to_remove.extend(response.remove)


def _header_options(modifier: model.HeaderModifier) -> list[base_pb2.HeaderValueOption]:
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    append = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
    pairs = [(h, overwrite) for h in modifier.set] + [(h, append) for h in modifier.add]
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=h.name, value=h.value), append_action=action
        )
        for h, action in pairs
    ]


def _timeouts(
    action: rc_pb2.RouteAction, timeouts: model.Timeouts | None, retry: model.Retry | None
) -> None:
    """Gateway API ``request`` bounds the whole exchange; ``backendRequest`` each try.

    0 (or unset) means no timeout, as in Istio: Envoy's own 15 s default would cut streams.
    Without retries there is one try, so ``backendRequest`` bounds the route too.
    """
    request = timeouts.request if timeouts and timeouts.request else None
    backend = timeouts.backend_request if timeouts and timeouts.backend_request else None
    if backend is not None and retry is None:
        request = backend if request is None else min(request, backend)
    action.timeout.CopyFrom(protos.duration(request or 0))


def _retry(retry: model.Retry, timeouts: model.Timeouts | None) -> rc_pb2.RetryPolicy:
    retry_on = ",".join(retry.retry_on) if retry.retry_on else _RETRY_ON
    if retry.codes and "retriable-status-codes" not in retry_on:
        retry_on += ",retriable-status-codes"
    policy = rc_pb2.RetryPolicy(
        retry_on=retry_on,
        num_retries=protos.uint32(retry.attempts),
        retriable_status_codes=list(retry.codes),
    )
    if retry.backoff_seconds:
        policy.retry_back_off.base_interval.CopyFrom(protos.duration(retry.backoff_seconds))
    if timeouts is not None and timeouts.backend_request:
        policy.per_try_timeout.CopyFrom(protos.duration(timeouts.backend_request))
    elif retry.per_try_timeout:
        policy.per_try_timeout.CopyFrom(protos.duration(retry.per_try_timeout))
    return policy


def _mirror(mirror: model.Mirror) -> rc_pb2.RouteAction.RequestMirrorPolicy:
    policy = rc_pb2.RouteAction.RequestMirrorPolicy(cluster=mirror.cluster)
    if mirror.percent < 100:
        policy.runtime_fraction.default_value.CopyFrom(
            percent_pb2.FractionalPercent(
                numerator=round(mirror.percent * 10_000),
                denominator=percent_pb2.FractionalPercent.MILLION,
            )
        )
    return policy


def _rewrite(
    action: rc_pb2.RouteAction, rewrite: model.Rewrite, path: model.PathMatch | None
) -> None:
    if rewrite.hostname is not None:
        action.host_rewrite_literal = rewrite.hostname
    if rewrite.path is None:
        return
    if rewrite.path.type is model.PathModifierType.FULL:
        action.regex_rewrite.CopyFrom(_full_path(rewrite.path.value))
        return
    prefix_rewrite, regex_rewrite = _prefix_replacement(path, rewrite.path.value)
    if prefix_rewrite is not None:
        action.prefix_rewrite = prefix_rewrite
    if regex_rewrite is not None:
        action.regex_rewrite.CopyFrom(regex_rewrite)


def _full_path(value: str) -> regex_pb2.RegexMatchAndSubstitute:
    # Envoy matches the path without its query string and keeps the query, as the spec wants.
    return regex_pb2.RegexMatchAndSubstitute(
        pattern=regex_pb2.RegexMatcher(regex="^/.*$"), substitution=value
    )


def _prefix_replacement(
    path: model.PathMatch | None, replacement: str
) -> tuple[str | None, regex_pb2.RegexMatchAndSubstitute | None]:
    """ReplacePrefixMatch over a PathPrefix match, with the spec's slash rules.

    ``/foo`` → ``/xyz``: /foo → /xyz, /foo/bar → /xyz/bar. ``/foo`` → ``/``: /foo → /,
    /foo/bar → /bar (a plain prefix_rewrite would give //bar). A trailing slash on either
    side does not count.
    """
    prefix = (path.value if path is not None else "/").rstrip("/")
    target = replacement.rstrip("/")
    if prefix == "":
        return (target + "/", None) if target else (None, None)
    if target == "":
        pattern = regex_pb2.RegexMatcher(regex=f"^{re.escape(prefix)}/*")
        return None, regex_pb2.RegexMatchAndSubstitute(pattern=pattern, substitution="/")
    return target, None


def redirect(
    redirect: model.Redirect, path: model.PathMatch | None, listener_port: int
) -> rc_pb2.RedirectAction:
    """HTTPRequestRedirectFilter, with the spec's port rules.

    No port given: the scheme's well-known port if the scheme is set, else the port the
    client dialled (the Service port). A port that is the scheme's default is left out of
    Location; the HCM strips the request's own port (strip_any_host_port), so leaving
    ``port_redirect`` unset does just that.
    """
    out = rc_pb2.RedirectAction(response_code=_REDIRECT_CODES[redirect.status_code])
    if redirect.scheme is not None:
        out.scheme_redirect = redirect.scheme
    if redirect.hostname is not None:
        out.host_redirect = redirect.hostname
    scheme = (redirect.scheme or "http").lower()
    port = redirect.port
    if port is None:
        default = _DEFAULT_PORTS.get(scheme) if redirect.scheme is not None else None
        port = default if default is not None else listener_port
    if port != _DEFAULT_PORTS.get(scheme):
        out.port_redirect = port
    if redirect.path is not None:
        if redirect.path.type is model.PathModifierType.FULL:
            out.path_redirect = redirect.path.value
        else:
            prefix_rewrite, regex_rewrite = _prefix_replacement(path, redirect.path.value)
            if prefix_rewrite is not None:
                out.prefix_rewrite = prefix_rewrite
            if regex_rewrite is not None:
                out.regex_rewrite.CopyFrom(regex_rewrite)
    return out

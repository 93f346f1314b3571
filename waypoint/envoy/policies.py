"""Policies → Envoy: ext_authz, fault, local rate limit, cluster traffic policy, tracing.

HTTP filters are added to a destination's HCM only when one of its routes needs them, each
disabled by default and switched on per route with ``typed_per_filter_config``; so a waypoint
without policies renders exactly as before.

Authorization: an ext_authz filter (one per failure mode; ``failure_mode_allow`` is a filter
setting) calls the ``extauthz`` cluster. Each route sets its own check settings: the Rego
decision, the JWT requirement and the destination's SPIFFE ID as context extensions, its
timeout on the gRPC service and its body limit. The internal listener has no TLS, so Envoy
would send an empty ``source.principal``; a header_mutation filter before ext_authz replaces
any client-sent ``x-waypoint-source-principal`` with the HBONE peer's ID from filter state,
and the ``source_principal_header`` context extension tells extauthz to trust that header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from google.protobuf import message  # type: ignore[import-untyped,unused-ignore]

from waypoint import model
from waypoint.envoy import filters, jwt_authn, protos, rbac
from waypoint.envoy import options as options_mod

EXTAUTHZ_CLUSTER = "extauthz"
OTEL_CLUSTER = "otel_collector"
DEFAULT_EXTAUTHZ_ADDRESS = "127.0.0.1:9191"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
EXT_AUTHZ_OPEN = "envoy.filters.http.ext_authz.fail_open"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
FAULT = "envoy.filters.http.fault"
LOCAL_RATE_LIMIT = "envoy.filters.http.local_ratelimit"
OPENTELEMETRY = "envoy.tracers.opentelemetry"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SOURCE_PRINCIPAL_HEADER = "x-waypoint-source-principal"
# Context extension keys; extauthz/input.py reads the same names.
CTX_DECISION = "decision"
CTX_JWT = "jwt"
CTX_POLICY = "policy"
CTX_DESTINATION_PRINCIPAL = "destination_principal"
CTX_SOURCE_PRINCIPAL_HEADER = "source_principal_header"
_LB = {
    model.LoadBalancerType.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    model.LoadBalancerType.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    model.LoadBalancerType.RANDOM: cluster_pb2.Cluster.RANDOM,
    model.LoadBalancerType.CONSISTENT_HASH: cluster_pb2.Cluster.RING_HASH,
}


# --- which policies a destination uses -------------------------------------------------------


def route_policies(destination: model.Destination) -> list[model.RoutePolicy]:
    found = [r.policy for r in destination.routes if r.policy is not None]
    if not destination.routes and destination.policy is not None:
        found.append(destination.policy)
    return found


def _authz_filter_name(authz: model.ExtAuthz) -> str:
    return EXT_AUTHZ_OPEN if authz.failure_mode is model.FailureMode.OPEN else EXT_AUTHZ


# --- HTTP filters for a destination's HCM ----------------------------------------------------


def http_filters(
    destination: model.Destination, providers: Sequence[model.JwtProvider] = ()
) -> list[hcm_pb2.HttpFilter]:
    """Policy filters and then the router.

    Authentication and Istio authorization first, for every request: jwt_authn (so a bad
    token is a 401 before anything else, CUSTOM included), CUSTOM, then the AUDIT, DENY and
    ALLOW RBAC filters. Then the per-route ones, disabled unless a route enables them.
    """
    used = route_policies(destination)
    out: list[hcm_pb2.HttpFilter] = []
    verifier = jwt_authn.http_filter(destination, providers)
    if verifier is not None:
        out.append(verifier)
    custom = rbac.custom_filters(destination)
    if custom:
        out.append(source_principal_header())
        out += custom
    out += rbac.http_filters(destination)
    if any(p.fault for p in used):
        out.append(_disabled(FAULT, fault_pb2.HTTPFault()))
    modes = {_authz_filter_name(p.authz) for p in used if p.authz is not None}
    if modes:
        if not custom:
            out.append(source_principal_header())
        for name in sorted(modes):
            config = _ext_authz(open_=name == EXT_AUTHZ_OPEN)
            if verifier is not None:
                # extauthz reads the payload jwt_authn verified instead of verifying again.
                config.metadata_context_namespaces.append(jwt_authn.FILTER)
            out.append(_disabled(name, config))
    if any(p.rate_limit for p in used):
        limiter = local_rate_limit_pb2.LocalRateLimit(stat_prefix="local_rate_limit")
        out.append(_disabled(LOCAL_RATE_LIMIT, limiter))
    out.append(filters.router())
    return out


def _disabled(name: str, config: message.Message) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=protos.pack(config), disabled=True)


def source_principal_header() -> hcm_pb2.HttpFilter:
    """Overwrite ``x-waypoint-source-principal`` with the HBONE peer's SPIFFE ID.

    The header is removed first, so a client-sent value never survives, even when the
    filter state is missing (then the header is simply absent).
    """
    value = "%FILTER_STATE(" + filters.SOURCE_PRINCIPAL_KEY + ":PLAIN)%"
    mutations = header_mutation_pb2.Mutations(
        request_mutations=[
            mutation_rules_pb2.HeaderMutation(remove=SOURCE_PRINCIPAL_HEADER),
            mutation_rules_pb2.HeaderMutation(
                append=base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=SOURCE_PRINCIPAL_HEADER, value=value),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    keep_empty_value=False,
                )
            ),
        ]
    )
    config = header_mutation_pb2.HeaderMutation(mutations=mutations)
    return hcm_pb2.HttpFilter(name=HEADER_MUTATION, typed_config=protos.pack(config))


def _grpc_service(timeout: float) -> grpc_service_pb2.GrpcService:
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=EXTAUTHZ_CLUSTER),
        timeout=protos.duration(timeout),
    )


def _ext_authz(open_: bool) -> ext_authz_pb2.ExtAuthz:
    return ext_authz_pb2.ExtAuthz(
        grpc_service=_grpc_service(0.2),
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=open_,
        # A failed or timed-out check is 403 by default; say what happened instead.
        status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
        include_peer_certificate=False,
    )


# --- per-route configuration -----------------------------------------------------------------


def apply_route(
    out: rc_pb2.Route, policy: model.RoutePolicy | None, destination: model.Destination
) -> None:
    """Switch the route's filters on with its settings."""
    if any(p.action is model.AuthzAction.CUSTOM for p in destination.authorization):
        _custom_route(out, destination)
    if policy is None:
        return
    if policy.authz is not None:
        per_route = ext_authz_pb2.ExtAuthzPerRoute(
            check_settings=_check_settings(policy.authz, destination)
        )
        _enable(out, _authz_filter_name(policy.authz), per_route)
    if policy.fault is not None:
        _enable(out, FAULT, fault(policy.fault))
    if policy.rate_limit is not None:
        _enable(out, LOCAL_RATE_LIMIT, rate_limit(policy.rate_limit, out.name))


def _custom_route(out: rc_pb2.Route, destination: model.Destination) -> None:
    """What extauthz is told when an AuthorizationPolicy CUSTOM rule sends it a request:
    the policies (its default decision decides), and where the principals are."""
    custom = [p for p in destination.authorization if p.action is model.AuthzAction.CUSTOM]
    extensions = {
        CTX_POLICY: ",".join(f"{p.namespace}/{p.name}" for p in custom),
        CTX_JWT: "optional",
        CTX_SOURCE_PRINCIPAL_HEADER: SOURCE_PRINCIPAL_HEADER,
    }
    if destination.principal:
        extensions[CTX_DESTINATION_PRINCIPAL] = destination.principal
    per_route = ext_authz_pb2.ExtAuthzPerRoute(
        check_settings=ext_authz_pb2.CheckSettings(context_extensions=extensions)
    )
    out.typed_per_filter_config[rbac.CUSTOM_EXT_AUTHZ].CopyFrom(protos.pack(per_route))


def _enable(out: rc_pb2.Route, name: str, config: message.Message) -> None:
    wrapped = rc_pb2.FilterConfig(config=protos.pack(config), disabled=False)
    out.typed_per_filter_config[name].CopyFrom(protos.pack(wrapped))


def _check_settings(
    authz: model.ExtAuthz, destination: model.Destination
) -> ext_authz_pb2.CheckSettings:
    extensions = {
        CTX_DECISION: authz.decision,
        CTX_JWT: "required" if authz.jwt_required else "optional",
        CTX_POLICY: authz.policy,
        CTX_SOURCE_PRINCIPAL_HEADER: SOURCE_PRINCIPAL_HEADER,
    }
    if destination.principal:
        extensions[CTX_DESTINATION_PRINCIPAL] = destination.principal
    out = ext_authz_pb2.CheckSettings(
        context_extensions=extensions, grpc_service=_grpc_service(authz.timeout)
    )
    if authz.max_request_bytes:
        out.with_request_body.CopyFrom(
            ext_authz_pb2.BufferSettings(
                max_request_bytes=authz.max_request_bytes,
                allow_partial_message=authz.allow_partial_message,
            )
        )
    return out


def _percent(value: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def fault(spec: model.FaultInjection) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if spec.delay is not None:
        out.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=protos.duration(spec.delay), percentage=_percent(spec.delay_percent)
            )
        )
    if spec.abort_status is not None:
        out.abort.CopyFrom(
            fault_pb2.FaultAbort(
                http_status=spec.abort_status, percentage=_percent(spec.abort_percent)
            )
        )
    return out


def rate_limit(spec: model.LocalRateLimit, route_name: str) -> local_rate_limit_pb2.LocalRateLimit:
    """A token bucket for this route alone; over budget answers 429 (Envoy's default)."""
    always = base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        )
    )
    return local_rate_limit_pb2.LocalRateLimit(
        stat_prefix=filters.stat_prefix(route_name),
        token_bucket=token_bucket_pb2.TokenBucket(
            max_tokens=spec.tokens,
            tokens_per_fill=protos.uint32(spec.tokens),
            fill_interval=protos.duration(spec.fill_interval),
        ),
        filter_enabled=always,
        filter_enforced=always,
    )


def hash_policies(lb: model.LoadBalancer | None) -> list[rc_pb2.RouteAction.HashPolicy]:
    """What a route to a ConsistentHash cluster hashes on."""
    if lb is None or lb.type is not model.LoadBalancerType.CONSISTENT_HASH:
        return []
    if lb.hash_header is not None:
        return [
            rc_pb2.RouteAction.HashPolicy(
                header=rc_pb2.RouteAction.HashPolicy.Header(header_name=lb.hash_header)
            )
        ]
    cookie = rc_pb2.RouteAction.HashPolicy.Cookie(name=lb.hash_cookie or "")
    if lb.cookie_ttl is not None:
        cookie.ttl.CopyFrom(protos.duration(lb.cookie_ttl))
    return [rc_pb2.RouteAction.HashPolicy(cookie=cookie)]


def load_balancers(waypoint: model.Waypoint) -> dict[str, model.LoadBalancer]:
    return {
        c.name: c.policy.load_balancer
        for c in waypoint.clusters
        if c.policy is not None and c.policy.load_balancer is not None
    }


def apply_hashing(
    action: rc_pb2.RouteAction, clusters: Iterable[str], lbs: Mapping[str, model.LoadBalancer]
) -> None:
    for name in clusters:
        found = hash_policies(lbs.get(name))
        if found:
            action.hash_policy.extend(found)
            return


# --- clusters --------------------------------------------------------------------------------


def apply_cluster(out: cluster_pb2.Cluster, policy: model.ClusterPolicy | None) -> None:
    if policy is None:
        return
    if policy.load_balancer is not None:
        out.lb_policy = _LB[policy.load_balancer.type]
    if policy.circuit_breaker is not None:
        out.circuit_breakers.CopyFrom(_circuit_breakers(policy.circuit_breaker))
    if policy.outlier_detection is not None:
        out.outlier_detection.CopyFrom(_outlier(policy.outlier_detection))


def _circuit_breakers(spec: model.CircuitBreaker) -> circuit_breaker_pb2.CircuitBreakers:
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    pairs = (
        ("max_connections", spec.max_connections),
        ("max_pending_requests", spec.max_pending_requests),
        ("max_requests", spec.max_parallel_requests),
        ("max_retries", spec.max_parallel_retries),
    )
    for field, value in pairs:
        if value is not None:
            getattr(thresholds, field).CopyFrom(protos.uint32(value))
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _outlier(spec: model.OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    out = outlier_detection_pb2.OutlierDetection()
    if spec.consecutive_5xx is not None:
        out.consecutive_5xx.CopyFrom(protos.uint32(spec.consecutive_5xx))
    if spec.interval is not None:
        out.interval.CopyFrom(protos.duration(spec.interval))
    if spec.base_ejection_time is not None:
        out.base_ejection_time.CopyFrom(protos.duration(spec.base_ejection_time))
    if spec.max_ejection_percent is not None:
        out.max_ejection_percent.CopyFrom(protos.uint32(spec.max_ejection_percent))
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


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def service_cluster(
    name: str, target: str, options: options_mod.BootstrapOptions
) -> cluster_pb2.Cluster:
    """An HTTP/2 (gRPC) cluster for a sidecar or collector at ``host:port`` or ``unix:/path``."""
    endpoint = endpoint_components_pb2.Endpoint(address=_address(target))
    host = target.rpartition(":")[0]
    dns = not target.startswith("unix:") and not _is_ip(host)
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
    out.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(protos.pack(http2))
    return out


def extra_clusters(
    waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    out = []
    if waypoint.needs_extauthz:
        address = options.extauthz_address or DEFAULT_EXTAUTHZ_ADDRESS
        out.append(service_cluster(EXTAUTHZ_CLUSTER, address, options))
    if options.otel_collector:
        out.append(service_cluster(OTEL_CLUSTER, options.otel_collector, options))
    used = {name for d in waypoint.destinations for name in d.jwt_providers}
    out += jwt_authn.clusters([p for p in waypoint.jwt_providers if p.name in used], options)
    return out


# --- tracing ---------------------------------------------------------------------------------


def tracing(
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

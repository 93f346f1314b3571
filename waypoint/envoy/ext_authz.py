"""ExtAuthzPolicy → Envoy's ext_authz filter calling the extauthz sidecar.

One ext_authz filter per failure mode (``failure_mode_allow`` is a filter setting), disabled
in the HCM; each route with the policy enables it with its own check settings: the Rego
decision, the JWT requirement and the destination's SPIFFE ID as context extensions, its
timeout on the gRPC service and its body limit. The filters come after Istio's authorization
and fault injection, behind the source principal header (``waypoint.envoy.source_principal``)
unless a CUSTOM policy's filters already set it.

This module also owns what every extauthz caller shares (AuthorizationPolicy CUSTOM
included, ``waypoint.envoy.custom``): the ``extauthz`` cluster and the context extension keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import http_status_pb2

from waypoint import model
from waypoint.envoy import grpc_cluster, jwt_authn, perroute, protos, source_principal
from waypoint.envoy import options as options_mod

EXTAUTHZ_CLUSTER = "extauthz"
DEFAULT_EXTAUTHZ_ADDRESS = "127.0.0.1:9191"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
EXT_AUTHZ_OPEN = "envoy.filters.http.ext_authz.fail_open"
# Context extension keys; extauthz/input.py reads the same names.
CTX_DECISION = "decision"
CTX_JWT = "jwt"
CTX_POLICY = "policy"
CTX_DESTINATION_PRINCIPAL = "destination_principal"
CTX_SOURCE_PRINCIPAL_HEADER = "source_principal_header"


def grpc_service(timeout: float) -> grpc_service_pb2.GrpcService:
    """The extauthz sidecar, with ``timeout`` seconds for one check."""
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=EXTAUTHZ_CLUSTER),
        timeout=protos.duration(timeout),
    )


def _filter_name(authz: model.ExtAuthz) -> str:
    return EXT_AUTHZ_OPEN if authz.failure_mode is model.FailureMode.OPEN else EXT_AUTHZ


# --- the hook (waypoint.envoy.policies.Hook) -------------------------------------------------


def http_filters(
    destination: model.Destination, providers: Sequence[model.JwtProvider]
) -> list[hcm_pb2.HttpFilter]:
    """One disabled ext_authz filter per failure mode the destination's routes use."""
    modes = {
        _filter_name(p.authz) for p in perroute.route_policies(destination) if p.authz is not None
    }
    if not modes:
        return []
    out = []
    if not any(p.action is model.AuthzAction.CUSTOM for p in destination.authorization):
        # With CUSTOM, its filters run first and have set the header already.
        out.append(source_principal.http_filter())
    verified = bool(jwt_authn.providers_for(destination, providers))
    for name in sorted(modes):
        config = _ext_authz(open_=name == EXT_AUTHZ_OPEN)
        if verified:
            # extauthz reads the payload jwt_authn verified instead of verifying again.
            config.metadata_context_namespaces.append(jwt_authn.FILTER)
        out.append(perroute.disabled(name, config))
    return out


def patch_route(
    out: rc_pb2.Route, policy: model.RoutePolicy | None, destination: model.Destination
) -> None:
    """Enable the route's ext_authz filter with its check settings."""
    if policy is None or policy.authz is None:
        return
    per_route = ext_authz_pb2.ExtAuthzPerRoute(
        check_settings=_check_settings(policy.authz, destination)
    )
    perroute.enable(out, _filter_name(policy.authz), per_route)


def clusters(
    waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    """The extauthz sidecar's cluster, for ExtAuthzPolicy and CUSTOM alike."""
    if not waypoint.needs_extauthz:
        return []
    address = options.extauthz_address or DEFAULT_EXTAUTHZ_ADDRESS
    return [grpc_cluster.build(EXTAUTHZ_CLUSTER, address, options)]


# --- configs ---------------------------------------------------------------------------------


def _ext_authz(open_: bool) -> ext_authz_pb2.ExtAuthz:
    return ext_authz_pb2.ExtAuthz(
        grpc_service=grpc_service(0.2),
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=open_,
        # A failed or timed-out check is 403 by default; say what happened instead.
        status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
        include_peer_certificate=False,
    )


def _check_settings(
    authz: model.ExtAuthz, destination: model.Destination
) -> ext_authz_pb2.CheckSettings:
    extensions = {
        CTX_DECISION: authz.decision,
        CTX_JWT: "required" if authz.jwt_required else "optional",
        CTX_POLICY: authz.policy,
        CTX_SOURCE_PRINCIPAL_HEADER: source_principal.HEADER,
    }
    if destination.principal:
        extensions[CTX_DESTINATION_PRINCIPAL] = destination.principal
    out = ext_authz_pb2.CheckSettings(
        context_extensions=extensions, grpc_service=grpc_service(authz.timeout)
    )
    if authz.max_request_bytes:
        out.with_request_body.CopyFrom(
            ext_authz_pb2.BufferSettings(
                max_request_bytes=authz.max_request_bytes,
                allow_partial_message=authz.allow_partial_message,
            )
        )
    return out

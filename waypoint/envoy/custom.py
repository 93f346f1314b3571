"""Istio AuthorizationPolicy CUSTOM → a shadow RBAC mark and an ext_authz filter enabled by it.

A shadow RBAC filter (the policies' rules, as ``waypoint.envoy.rbac`` builds them) marks the
requests they match; an ext_authz filter enabled by that mark asks the extauthz sidecar about
those only. Both run after jwt_authn and before Istio's AUDIT, DENY and ALLOW filters, behind
the source principal header (``waypoint.envoy.source_principal``). Each route tells extauthz
which policies sent the request (its default decision decides) and where the principals are.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2
from envoy.type.v3 import http_status_pb2

from waypoint import model
from waypoint.envoy import ext_authz, jwt_authn, protos, rbac, source_principal
from waypoint.envoy import options as options_mod

EXT_AUTHZ = "envoy.filters.http.ext_authz.custom"
SHADOW_RBAC = rbac.HTTP_RBAC + ".custom"
PREFIX = "ext_authz_"  # the shadow rules' stat prefix, and so the key of their verdict


def policies(destination: model.Destination) -> list[model.AuthorizationPolicy]:
    """The destination's CUSTOM policies."""
    return [p for p in destination.authorization if p.action is model.AuthzAction.CUSTOM]


# --- the hook (waypoint.envoy.policies.Hook) -------------------------------------------------


def http_filters(
    destination: model.Destination, _providers: Sequence[model.JwtProvider]
) -> list[hcm_pb2.HttpFilter]:
    """Mark the requests CUSTOM policies match, in shadow mode; ext_authz checks only those."""
    custom = policies(destination)
    if not custom:
        return []
    shadow = http_rbac_pb2.RBAC(
        shadow_rules=rbac.rules(custom, rbac_pb2.RBAC.DENY, destination, tcp=False),
        shadow_rules_stat_prefix=PREFIX,
    )
    enabled_when = metadata_pb2.MetadataMatcher(
        filter=rbac.HTTP_RBAC,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=PREFIX + "shadow_effective_policy_id")],
        value=value_pb2.ValueMatcher(
            string_match=string_pb2.StringMatcher(prefix=rbac.CUSTOM_POLICY_PREFIX)
        ),
    )
    check = ext_authz_pb2.ExtAuthz(
        grpc_service=ext_authz.grpc_service(0.2),
        transport_api_version=config_source_pb2.V3,
        status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
        filter_enabled_metadata=enabled_when,
        metadata_context_namespaces=[jwt_authn.FILTER],
    )
    return [
        source_principal.http_filter(),
        hcm_pb2.HttpFilter(name=SHADOW_RBAC, typed_config=protos.pack(shadow)),
        hcm_pb2.HttpFilter(name=EXT_AUTHZ, typed_config=protos.pack(check)),
    ]


def patch_route(
    out: rc_pb2.Route, _policy: model.RoutePolicy | None, destination: model.Destination
) -> None:
    """What extauthz is told when a CUSTOM rule sends it a request from this route: the
    policies (its default decision decides), and where the principals are."""
    custom = policies(destination)
    if not custom:
        return
    extensions = {
        ext_authz.CTX_POLICY: ",".join(f"{p.namespace}/{p.name}" for p in custom),
        ext_authz.CTX_JWT: "optional",
        ext_authz.CTX_SOURCE_PRINCIPAL_HEADER: source_principal.HEADER,
    }
    if destination.principal:
        extensions[ext_authz.CTX_DESTINATION_PRINCIPAL] = destination.principal
    per_route = ext_authz_pb2.ExtAuthzPerRoute(
        check_settings=ext_authz_pb2.CheckSettings(context_extensions=extensions)
    )
    out.typed_per_filter_config[EXT_AUTHZ].CopyFrom(protos.pack(per_route))


def clusters(
    _waypoint: model.Waypoint, _options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    """None of its own: CUSTOM calls the sidecar ``waypoint.envoy.ext_authz`` adds."""
    return []

"""RequestAuthentication → Envoy's ``jwt_authn`` filter, and the clusters that fetch JWKS.

Istio's semantics (istio/api ``security/v1beta1/request_authentication.proto``): a request
with an invalid token is rejected with 401; a request without a token passes, and an
AuthorizationPolicy's ``requestPrincipals`` decides. In Envoy terms, as istiod writes it:
``requires_any`` of every provider plus ``allow_missing``.

Stricter than Istio, on purpose: ``exp`` is required (``require_expiration``) and the clock
skew is 60 s; the parser already requires ``audiences``. The verified payload goes to
dynamic metadata (``envoy.filters.http.jwt_authn`` → ``payload``) where RBAC's
``request.auth.*`` matchers and the ext_authz CheckRequest (``metadata_context``) read it.

``jwksUri`` is fetched by Envoy itself through a generated cluster, asynchronously (the
listener does not wait) and cached.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, http_uri_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import empty_pb2

from waypoint import model
from waypoint.envoy import options as options_mod
from waypoint.envoy import protos

FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "payload"
CLOCK_SKEW_SECONDS = 60
JWKS_CACHE_SECONDS = 20 * 60  # istiod's default JWKS refresh interval
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
# Verified tokens are remembered (until they expire) so a client reusing its token costs a
# lookup, not an RS256 verification, per request.
JWT_CACHE_SIZE = 1000
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"


def jwks_cluster_name(uri: str) -> str:
    host, port, _tls = _endpoint(uri)
    return f"jwks|{host}|{port}"


def _endpoint(uri: str) -> tuple[str, int, bool]:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"jwksUri {uri!r} must be an http or https URL")
    tls = parsed.scheme == "https"
    return parsed.hostname, parsed.port or (443 if tls else 80), tls


def _provider(provider: model.JwtProvider) -> jwt_pb2.JwtProvider:
    out = jwt_pb2.JwtProvider(
        issuer=provider.issuer,
        audiences=list(provider.audiences),
        require_expiration=True,
        clock_skew_seconds=CLOCK_SKEW_SECONDS,
        forward=provider.forward_original_token,
        payload_in_metadata=PAYLOAD_KEY,
        jwt_cache_config=jwt_pb2.JwtCacheConfig(jwt_cache_size=JWT_CACHE_SIZE),
        from_headers=[
            jwt_pb2.JwtHeader(name=h.name, value_prefix=h.prefix) for h in provider.from_headers
        ],
        from_params=list(provider.from_params),
        from_cookies=list(provider.from_cookies),
        claim_to_headers=[
            jwt_pb2.JwtClaimToHeader(header_name=c.header, claim_name=c.claim)
            for c in provider.claim_to_headers
        ],
    )
    if provider.payload_header is not None:
        out.forward_payload_header = provider.payload_header
    if provider.jwks is not None:
        out.local_jwks.CopyFrom(protos.inline(provider.jwks))
    elif provider.jwks_uri is not None:
        out.remote_jwks.CopyFrom(
            jwt_pb2.RemoteJwks(
                http_uri=http_uri_pb2.HttpUri(
                    uri=provider.jwks_uri,
                    cluster=jwks_cluster_name(provider.jwks_uri),
                    timeout=protos.duration(provider.jwks_timeout or JWKS_FETCH_TIMEOUT_SECONDS),
                ),
                cache_duration=protos.duration(JWKS_CACHE_SECONDS),
                # Fetched in the background: the listener is ready before the keys arrive,
                # and a failed fetch is retried rather than failing every request.
                async_fetch=jwt_pb2.JwksAsyncFetch(),
            )
        )
    return out


def providers_for(
    destination: model.Destination, providers: Sequence[model.JwtProvider]
) -> list[model.JwtProvider]:
    """The providers that verify tokens at ``destination``: when any, jwt_authn runs there."""
    return [p for p in providers if p.name in destination.jwt_providers]


def http_filter(
    destination: model.Destination, providers: Sequence[model.JwtProvider]
) -> hcm_pb2.HttpFilter | None:
    """The jwt_authn filter of one destination, or None when no RequestAuthentication
    names it."""
    chosen = providers_for(destination, providers)
    if not chosen:
        return None
    any_of = [jwt_pb2.JwtRequirement(provider_name=p.name) for p in chosen]
    any_of.append(jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty()))
    config = jwt_pb2.JwtAuthentication(
        providers={p.name: _provider(p) for p in chosen},
        rules=[
            jwt_pb2.RequirementRule(
                match=rc_pb2.RouteMatch(prefix="/"),
                requires=jwt_pb2.JwtRequirement(
                    requires_any=jwt_pb2.JwtRequirementOrList(requirements=any_of)
                ),
            )
        ],
        bypass_cors_preflight=True,
    )
    return hcm_pb2.HttpFilter(name=FILTER, typed_config=protos.pack(config))


# --- the hook (waypoint.envoy.policies.Hook) -------------------------------------------------


def http_filters(
    destination: model.Destination, providers: Sequence[model.JwtProvider]
) -> list[hcm_pb2.HttpFilter]:
    """Authentication first, for every request: a bad token is a 401 before anything else."""
    verifier = http_filter(destination, providers)
    return [] if verifier is None else [verifier]


def patch_route(
    _out: rc_pb2.Route, _policy: model.RoutePolicy | None, _destination: model.Destination
) -> None:
    """Nothing per route: the filter's one rule covers every path."""


def clusters(
    waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    """The JWKS clusters of the providers some destination uses."""
    used = {name for d in waypoint.destinations for name in d.jwt_providers}
    return jwks_clusters([p for p in waypoint.jwt_providers if p.name in used], options)


def jwks_clusters(
    providers: Iterable[model.JwtProvider], options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    """One cluster per JWKS host the providers fetch from."""
    out: dict[str, cluster_pb2.Cluster] = {}
    for provider in providers:
        if provider.jwks_uri is None or provider.jwks is not None:
            continue
        name = jwks_cluster_name(provider.jwks_uri)
        if name not in out:
            out[name] = _cluster(name, provider.jwks_uri, options)
    return [out[name] for name in sorted(out)]


def _cluster(name: str, uri: str, options: options_mod.BootstrapOptions) -> cluster_pb2.Cluster:
    host, port, tls = _endpoint(uri)
    out = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=protos.duration(options.connect_timeout_seconds),
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
    )
    out.load_assignment.cluster_name = name
    endpoint = out.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.CopyFrom(
        address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))
    )
    if tls:
        context = tls_pb2.UpstreamTlsContext(
            sni=host,
            common_tls_context=tls_pb2.CommonTlsContext(
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(filename=SYSTEM_CA_FILE),
                    match_typed_subject_alt_names=[
                        common_pb2.SubjectAltNameMatcher(
                            san_type=common_pb2.SubjectAltNameMatcher.DNS,
                            matcher=string_pb2.StringMatcher(exact=host),
                        )
                    ],
                )
            ),
        )
        out.transport_socket.CopyFrom(
            base_pb2.TransportSocket(
                name="envoy.transport_sockets.tls", typed_config=protos.pack(context)
            )
        )
    return out

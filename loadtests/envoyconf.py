"""Small hand-written Envoy bootstraps for load tests: plain HTTP proxy hops, with or without ext_authz.

These are the baselines the waypoint is compared with: one HTTP listener per :class:`Hop`,
routing everything to one upstream (or answering itself with ``direct_response``), and, when
the hop names ext_authz endpoints, the ext_authz filter before the router (gRPC, fail closed).
Envoy balances a hop's Check calls round-robin across its endpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

Address = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Hop:
    """One listener: ``port`` on ``bind``; ``upstream`` None means answer 200 from Envoy itself."""

    name: str
    port: int
    upstream: Address | None = None
    authz: tuple[Address, ...] = ()
    bind: str = "127.0.0.1"
    authz_timeout_ms: int = 2000


def _socket(address: Address) -> dict[str, Any]:
    return {"socket_address": {"address": address[0], "port_value": address[1]}}


def _cluster(name: str, endpoints: tuple[Address, ...], http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket(ep)}} for ep in endpoints]}
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _route(hop: Hop) -> dict[str, Any]:
    if hop.upstream is None:
        return {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
        }
    return {"match": {"prefix": "/"}, "route": {"cluster": f"{hop.name}-upstream"}}


def _filters(hop: Hop) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if hop.authz:
        ext_authz = {
            "@type": EXT_AUTHZ,
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "grpc_service": {
                "envoy_grpc": {"cluster_name": f"{hop.name}-authz"},
                "timeout": f"{hop.authz_timeout_ms / 1000:g}s",
            },
        }
        filters.append({"name": "envoy.filters.http.ext_authz", "typed_config": ext_authz})
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}})
    return filters


def _listener(hop: Hop) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": hop.name,
        "route_config": {
            "name": hop.name,
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [_route(hop)]}],
        },
        "http_filters": _filters(hop),
    }
    return {
        "name": hop.name,
        "address": _socket((hop.bind, hop.port)),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def bootstrap(hops: list[Hop], admin_port: int) -> dict[str, Any]:
    """A static bootstrap serving every hop; names must be unique."""
    names = [hop.name for hop in hops]
    if len(set(names)) != len(names):
        raise ValueError(f"hop names must be unique, got {names}")
    clusters: list[dict[str, Any]] = []
    for hop in hops:
        if hop.upstream is not None:
            clusters.append(_cluster(f"{hop.name}-upstream", (hop.upstream,), http2=False))
        if hop.authz:
            clusters.append(_cluster(f"{hop.name}-authz", hop.authz, http2=True))
    return {
        "admin": {"address": _socket(("127.0.0.1", admin_port))},
        "static_resources": {"listeners": [_listener(hop) for hop in hops], "clusters": clusters},
    }

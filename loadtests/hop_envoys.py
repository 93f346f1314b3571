"""Hand-written Envoy bootstraps standing in for the two ztunnels of the hop benchmark.

Ambient mesh traffic leaves a pod through its node's ztunnel (the *client* side: plain TCP
in, HBONE out) and enters the destination pod through the destination node's ztunnel (the
*server* side: HBONE in, plain TCP to the pod). The hop benchmark measures the waypoint in
between, so both ends must be native, not Python:

- :func:`client_ztunnel`: one plain TCP listener per :class:`Tunnel`, each wrapping every
  accepted connection in an HTTP/2 CONNECT stream (``tcp_proxy`` ``tunneling_config``, the
  CONNECT authority being the destination ``addr:port``) over mTLS 1.3 with ALPN h2,
  presenting the client workload's SPIFFE certificate and accepting only the expected peer;
- :func:`server_ztunnel`: the pod's HBONE port, shaped as upstream Envoy terminates HBONE
  (see /work/shared/notes/verified-facts.md): mTLS 1.3 requiring a client certificate of the
  trust domain, HTTP/2 with ``allow_connect``, CONNECT routes matched on the exact
  ``:authority`` and terminated (``connect_config``) into a plain TCP connection to the pod's
  port. Any other authority gets 404, as ztunnel refuses a tunnel to an unknown destination.

Certificates are inline file references (static secrets): stand-ins never rotate.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from loadtests import envoyconf

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)

Address = envoyconf.Address


@dataclasses.dataclass(frozen=True)
class CertFiles:
    """A workload's PEM files, as ``waypoint.pki.Identity.write`` lays them out."""

    directory: pathlib.Path

    def tls_certificate(self) -> dict[str, Any]:
        return {
            "certificate_chain": {"filename": str(self.directory / "cert-chain.pem")},
            "private_key": {"filename": str(self.directory / "key.pem")},
        }

    @property
    def root(self) -> str:
        return str(self.directory / "root-cert.pem")


@dataclasses.dataclass(frozen=True)
class Tunnel:
    """A client-side listener: connections to ``listen`` go as HBONE to ``hbone`` for ``authority``."""

    name: str
    listen: Address
    hbone: Address
    authority: str  # the CONNECT target: a Service VIP:port or a pod addr:port
    peer_id: str  # the SPIFFE ID the HBONE server must present


def _socket(address: Address) -> dict[str, Any]:
    return {"socket_address": {"address": address[0], "port_value": address[1]}}


def _common_tls(certs: CertFiles, san: dict[str, str]) -> dict[str, Any]:
    """TLS 1.3 only, ALPN h2, our certificate, a peer whose URI SAN matches ``san``."""
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "alpn_protocols": ["h2"],
        "tls_certificates": [certs.tls_certificate()],
        "validation_context": {
            "trusted_ca": {"filename": certs.root},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}],
        },
    }


def _http2_options() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": envoyconf.HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def _static_cluster(name: str, address: Address) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(address)}}]}],
        },
    }


def _tunnel_listener(tunnel: Tunnel) -> dict[str, Any]:
    proxy = {
        "@type": TCP_PROXY,
        "stat_prefix": tunnel.name,
        "cluster": tunnel.name,
        "tunneling_config": {"hostname": tunnel.authority},
    }
    return {
        "name": tunnel.name,
        "address": _socket(tunnel.listen),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}
        ],
    }


def _tunnel_cluster(tunnel: Tunnel, certs: CertFiles) -> dict[str, Any]:
    cluster = _static_cluster(tunnel.name, tunnel.hbone)
    tls = {
        "@type": UPSTREAM_TLS,
        "common_tls_context": _common_tls(certs, {"exact": tunnel.peer_id}),
    }
    cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    cluster["typed_extension_protocol_options"] = _http2_options()
    return cluster


def _unique(names: list[str], what: str) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be unique, got {names}")


def client_ztunnel(tunnels: list[Tunnel], certs: CertFiles, admin_port: int) -> dict[str, Any]:
    """The source side: each tunnel's listener originates HBONE as the client workload."""
    if not tunnels:
        raise ValueError("client_ztunnel needs at least one tunnel")
    _unique([t.name for t in tunnels], "tunnel names")
    return {
        "admin": {"address": _socket(("127.0.0.1", admin_port))},
        "static_resources": {
            "listeners": [_tunnel_listener(t) for t in tunnels],
            "clusters": [_tunnel_cluster(t, certs) for t in tunnels],
        },
    }


def destination_cluster(authority: str) -> str:
    """The server side's cluster for one tunnel authority (``pod|<addr>_<port>``)."""
    return "pod|" + authority.replace(":", "_")


def _connect_route(authority: str) -> dict[str, Any]:
    return {
        "name": authority,
        "match": {
            "connect_matcher": {},
            "headers": [{"name": ":authority", "string_match": {"exact": authority}}],
        },
        "route": {
            "cluster": destination_cluster(authority),
            # A tunnel lives as long as the connection it carries: no route timeout.
            "timeout": "0s",
            "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
        },
    }


def _terminate_hcm(destinations: dict[str, Address]) -> dict[str, Any]:
    return {
        "@type": envoyconf.HCM,
        "stat_prefix": "hbone",
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        # The authority's port names the destination port: keep it.
        "strip_any_host_port": False,
        "stream_idle_timeout": "0s",
        "route_config": {
            "name": "hbone",
            "virtual_hosts": [
                {
                    "name": "hbone",
                    "domains": ["*"],
                    "routes": [_connect_route(a) for a in sorted(destinations)],
                }
            ],
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": envoyconf.ROUTER}}
        ],
    }


def server_ztunnel(
    listen: Address,
    certs: CertFiles,
    trust_domain: str,
    destinations: dict[str, Address],
    admin_port: int,
) -> dict[str, Any]:
    """The destination side: HBONE on ``listen``; each authority's tunnel ends at its address."""
    if not destinations:
        raise ValueError("server_ztunnel needs at least one destination")
    tls = {
        "@type": DOWNSTREAM_TLS,
        "common_tls_context": _common_tls(certs, {"prefix": f"spiffe://{trust_domain}/"}),
        "require_client_certificate": True,
    }
    listener = {
        "name": "hbone",
        "address": _socket(listen),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _terminate_hcm(destinations),
                    }
                ],
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
            }
        ],
    }
    clusters = [
        _static_cluster(destination_cluster(a), destinations[a]) for a in sorted(destinations)
    ]
    return {
        "admin": {"address": _socket(("127.0.0.1", admin_port))},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }

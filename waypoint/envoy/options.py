"""Deployment-time settings that shape the Envoy config but are not part of the IR."""

from __future__ import annotations

import dataclasses

DEFAULT_CERT_DIR = "/var/run/secrets/workload-spiffe-credentials"


@dataclasses.dataclass(frozen=True)
class BootstrapOptions:
    """Ports, addresses and file locations of one running waypoint.

    ``cert_dir`` holds ``cert-chain.pem``, ``key.pem`` and ``root-cert.pem`` (the layout of
    Istio's and csi-driver-spiffe's credential volumes); Envoy watches it for rotation.
    """

    trust_domain: str = "cluster.local"
    cert_dir: str = DEFAULT_CERT_DIR
    bind: str = "0.0.0.0"
    hbone_port: int = 15008
    # Where a sandwiched waypoint (model.Waypoint.proxy_port set) listens for ztunnel's PROXY
    # connections; 0 means the port of the Gateway's binding.
    proxy_port: int = 0
    upstream_hbone_port: int = 15008
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    readiness_port: int = 15021
    stats_port: int = 15090
    node_id: str = ""
    cluster: str = ""
    max_concurrent_streams: int = 1024
    # Where the two file-based SDS resources live (see waypoint.envoy.secrets); "" means
    # "<cert_dir>-sds". They must exist before Envoy starts: write them with
    # waypoint.runtime.sds.write_files.
    sds_dir: str = ""
    keepalive_interval_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 10.0
    # True: TLS contexts fetch the two secrets over ADS (an xDS server serves
    # Resources.secrets); False: from the SDS files, for a static bootstrap.
    sds_over_ads: bool = False
    # The extauthz sidecar (host:port or unix:/path); "" means 127.0.0.1:9191. Its cluster
    # and the ext_authz filters appear only when some route has an ExtAuthzPolicy.
    extauthz_address: str = ""
    # An OpenTelemetry collector (host:port, OTLP/gRPC); "" disables tracing spans.
    otel_collector: str = ""
    # A JSON line on stdout per request (HTTP) or connection (TCP). It is on by default so an
    # upgrade changes nothing, but it is not free: hop_bench measured 6-15% of the waypoint
    # Envoy's CPU (0.192 vs 0.180 CPU-s per 1k requests on a quiet run, 0.210 vs 0.178 on a
    # busy one), and Istio's default mesh config leaves access logging off. False drops it
    # from every listener.
    access_log: bool = True

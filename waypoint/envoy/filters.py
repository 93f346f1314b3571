"""Filters: the HTTP connection manager, router, set_filter_state, TCP proxy, PROXY protocol.

Also the JSON access log every listener writes to stdout, unless the deployment turns it off
(``BootstrapOptions.access_log``): builders take the switch explicitly, so none can forget it.
"""

from __future__ import annotations

import functools
import re

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import protocol_pb2, substitution_format_string_pb2
from envoy.config.core.v3 import proxy_protocol_pb2 as proxy_protocol_config_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.filters.listener.proxy_protocol.v3 import proxy_protocol_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.set_filter_state.v3 import (
    set_filter_state_pb2 as network_set_filter_state_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from waypoint.envoy import options as options_mod
from waypoint.envoy import protos

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
SET_FILTER_STATE = "envoy.filters.http.set_filter_state"
NETWORK_SET_FILTER_STATE = "envoy.filters.network.set_filter_state"
PROXY_PROTOCOL = "envoy.filters.listener.proxy_protocol"
# The client's SPIFFE ID, set on the HBONE stream (or from ztunnel's PROXY header) and shared
# with the internal listener.
SOURCE_PRINCIPAL_KEY = "io.waypoint.source_principal"
# The client's IP address (the HBONE peer's, or the PROXY header's source), for
# AuthorizationPolicy ipBlocks / source.ip.
SOURCE_ADDRESS_KEY = "io.waypoint.source_address"
# ztunnel's PROXY v2 TLV carrying the client's full SPIFFE ID (PROXY_PROTOCOL_AUTHORITY_TLV in
# istio/ztunnel src/proxy.rs), and where the listener filter stores it.
PEER_IDENTITY_TLV = 0xD0
PEER_PRINCIPAL_METADATA_KEY = "peer_principal"

_LOG_FIELDS = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "route_name": "%ROUTE_NAME%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "source_principal": "%FILTER_STATE(" + SOURCE_PRINCIPAL_KEY + ":PLAIN)%",
    "peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "request_id": "%REQ(X-REQUEST-ID)%",
}


def stat_prefix(name: str) -> str:
    """A stat prefix from a resource name: Envoy splits stat names on ``.``; keep one level."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


# Where an AuthorizationPolicy's verdict shows: the RBAC filters' matched policies (by
# action: allow_/deny_/audit_ and dry_run_ prefixes) and AUDIT's log hint.
_AUTHZ_LOG_FIELDS = {
    "rbac": "%DYNAMIC_METADATA(envoy.filters.http.rbac)%",
    "audit": "%DYNAMIC_METADATA(envoy.common:access_log_hint)%",
}


@functools.cache
def access_log(authz: bool = False) -> accesslog_pb2.AccessLog:
    """A JSON line per request or connection on stdout; ``authz`` adds the RBAC verdicts.

    Cached (the same for every listener); callers copy it into their messages and must not
    mutate it.
    """
    fields: dict[str, object] = dict(_LOG_FIELDS)
    if authz:
        fields.update(_AUTHZ_LOG_FIELDS)
    fmt = substitution_format_string_pb2.SubstitutionFormatString(
        json_format=protos.struct(fields), omit_empty_values=True
    )
    return accesslog_pb2.AccessLog(
        name="envoy.access_loggers.stdout",
        typed_config=protos.pack(stream_pb2.StdoutAccessLog(log_format=fmt)),
    )


def access_logs(enabled: bool, authz: bool = False) -> list[accesslog_pb2.AccessLog]:
    """What an HCM's or tcp_proxy's ``access_log`` field holds: the JSON log, or nothing."""
    return [access_log(authz)] if enabled else []


@functools.cache
def router() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=ROUTER, typed_config=protos.pack(router_pb2.Router()))


def set_source_principal(source_address: bool = False) -> hcm_pb2.HttpFilter:
    """Store the client's URI SAN as a string filter state shared with the upstream side.

    Shared ONCE: it crosses into the internal listener of the destination (which matches
    consumer routes and AuthorizationPolicy principals on it) and stops there. With
    ``source_address``, the client's IP goes along too, as an IP object RBAC can match
    CIDRs against.
    """
    once = value_pb2.FilterStateValue.ONCE
    values = [_principal_value("%DOWNSTREAM_PEER_URI_SAN%", once)]
    if source_address:
        values.append(_address_value(once))
    config = set_filter_state_pb2.Config(on_request_headers=values)
    return hcm_pb2.HttpFilter(name=SET_FILTER_STATE, typed_config=protos.pack(config))


def _address_value(
    shared: value_pb2.FilterStateValue.SharedWithUpstream.ValueType,
) -> value_pb2.FilterStateValue:
    """The client's IP (the connection's remote address: the HBONE peer, or the PROXY
    header's source) as an ``envoy.network.ip`` object."""
    return value_pb2.FilterStateValue(
        object_key=SOURCE_ADDRESS_KEY,
        factory_key="envoy.network.ip",
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=protos.inline("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")
        ),
        shared_with_upstream=shared,
    )


def _principal_value(
    source: str, shared: value_pb2.FilterStateValue.SharedWithUpstream.ValueType
) -> value_pb2.FilterStateValue:
    """The source principal from a format string."""
    return value_pb2.FilterStateValue(
        object_key=SOURCE_PRINCIPAL_KEY,
        factory_key="envoy.string",
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=protos.inline(source)
        ),
        shared_with_upstream=shared,
    )


@functools.cache
def proxy_protocol() -> listener_components_pb2.ListenerFilter:
    """Read ztunnel's PROXY v2 header: restore its addresses, keep TLV 0xD0 as metadata.

    A connection without a valid v2 header is closed (no v1, no plain fallback). Cached:
    callers copy it and must not mutate it.
    """
    rule = proxy_protocol_pb2.ProxyProtocol.Rule(
        tlv_type=PEER_IDENTITY_TLV,
        on_tlv_present=proxy_protocol_pb2.ProxyProtocol.KeyValuePair(
            key=PEER_PRINCIPAL_METADATA_KEY
        ),
    )
    config = proxy_protocol_pb2.ProxyProtocol(
        rules=[rule],
        allow_requests_without_proxy_protocol=False,
        # ztunnel writes v2 only (ppp::v2::Builder in src/proxy.rs).
        disallowed_versions=[proxy_protocol_config_pb2.ProxyProtocolConfig.V1],
        # proxy_proto.ztunnel.not_found_disallowed, .versions.v1.disallowed, ...: refusals.
        stat_prefix="ztunnel",
    )
    return listener_components_pb2.ListenerFilter(
        name=PROXY_PROTOCOL, typed_config=protos.pack(config)
    )


@functools.cache
def set_proxy_principal(source_address: bool = False) -> listener_components_pb2.Filter:
    """Copy the PROXY header's identity TLV into the source principal, per connection (and,
    with ``source_address``, the header's source address, for AuthorizationPolicy ipBlocks).

    Not shared with upstream: the HTTP streams of this connection read it where it is, and
    sharing would only split the upstream connection pools by client.
    """
    source = f"%DYNAMIC_METADATA({PROXY_PROTOCOL}:{PEER_PRINCIPAL_METADATA_KEY})%"
    value = _principal_value(source, value_pb2.FilterStateValue.NONE)
    # ztunnel writes the TLV only for a client with an identity (src/proxy.rs): without it
    # there is no principal at all, rather than Envoy's "-" for a missing value.
    value.format_string.omit_empty_values = True
    value.skip_if_empty = True
    values = [value]
    if source_address:
        values.append(_address_value(value_pb2.FilterStateValue.NONE))
    config = network_set_filter_state_pb2.Config(on_new_connection=values)
    return listener_components_pb2.Filter(
        name=NETWORK_SET_FILTER_STATE, typed_config=protos.pack(config)
    )


def http_connection_manager(
    name: str,
    route_config: route_pb2.RouteConfiguration,
    http_filters: list[hcm_pb2.HttpFilter],
    *,
    access_log: bool,
    authz_log: bool = False,
) -> hcm_pb2.HttpConnectionManager:
    """An HCM with the project's common settings (any codec; the caller refines)."""
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix(name),
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_config,
        http_filters=http_filters,
        access_log=access_logs(access_log, authz_log),
        use_remote_address=protos.boolean(False),
        normalize_path=protos.boolean(True),
        merge_slashes=False,
        strip_any_host_port=True,
    )


def connect_terminate_hcm(
    name: str,
    route_config: route_pb2.RouteConfiguration,
    options: options_mod.BootstrapOptions,
    source_address: bool = False,
) -> hcm_pb2.HttpConnectionManager:
    """HTTP/2 only, CONNECT allowed and upgraded, bounded streams, keepalive pings."""
    hcm = http_connection_manager(
        name,
        route_config,
        [set_source_principal(source_address), router()],
        access_log=options.access_log,
    )
    hcm.codec_type = hcm_pb2.HttpConnectionManager.HTTP2
    # The authority's port picks the destination: stripping it would make every route miss.
    hcm.strip_any_host_port = False
    hcm.http2_protocol_options.CopyFrom(
        protocol_pb2.Http2ProtocolOptions(
            allow_connect=True,
            max_concurrent_streams=protos.uint32(options.max_concurrent_streams),
            connection_keepalive=protocol_pb2.KeepaliveSettings(
                interval=protos.duration(options.keepalive_interval_seconds),
                timeout=protos.duration(options.keepalive_timeout_seconds),
            ),
        )
    )
    hcm.upgrade_configs.append(hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="CONNECT"))
    # A tunnel carries a whole TCP connection: it may idle as long as the connection does.
    hcm.stream_idle_timeout.CopyFrom(protos.duration(0))
    return hcm


def hcm_filter(hcm: hcm_pb2.HttpConnectionManager) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=HCM, typed_config=protos.pack(hcm))


def tcp_proxy(
    name: str, cluster: str, tunnel_hostname: str | None = None, *, access_log: bool
) -> listener_components_pb2.Filter:
    """Proxy bytes to ``cluster``; with ``tunnel_hostname``, inside an HTTP/2 CONNECT."""
    proxy = tcp_proxy_pb2.TcpProxy(
        stat_prefix=stat_prefix(name), cluster=cluster, access_log=access_logs(access_log)
    )
    if tunnel_hostname is not None:
        proxy.tunneling_config.CopyFrom(
            tcp_proxy_pb2.TcpProxy.TunnelingConfig(hostname=tunnel_hostname)
        )
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=protos.pack(proxy))

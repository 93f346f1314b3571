"""A stand-in for the ztunnel in front of a sandwiched waypoint, written from its source.

What ztunnel sends, by istio/ztunnel src/proxy.rs (``write_proxy_protocol``) and
src/proxy/inbound.rs: after terminating the client's HBONE tunnel it opens plain TCP to the
waypoint pod on the bound port and writes one PROXY protocol v2 header (the ``ppp`` crate's
``v2::Builder``, command PROXY, protocol STREAM) whose source is the client's address and
whose destination is the HBONE authority (the Service ``VIP:port``), followed by TLV 0xD0
with the client's identity as ``spiffe://<td>/ns/<ns>/sa/<sa>`` (``Identity``'s Display) and,
in newer versions, TLV 0xD1 with the Service hostname. Then the client's bytes, untouched.

The header layout is the PROXY protocol v2 specification (haproxy's proxy-protocol.txt,
section 2.2): a 12-byte signature, version/command, family/transport, a big-endian length,
the addresses and ports, then type-length-value records.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import struct

import h2.config
import h2.connection
import h2.events

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION_2_PROXY = 0x21  # version 2, command PROXY
TCP_OVER_IPV4 = 0x11
TCP_OVER_IPV6 = 0x21
PEER_IDENTITY_TLV = 0xD0
SERVICE_HOSTNAME_TLV = 0xD1


def header(
    source: tuple[str, int],
    destination: tuple[str, int],
    identity: str | None,
    hostname: str | None = None,
) -> bytes:
    """The PROXY v2 header ztunnel writes for one connection."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of one address family")
    family = TCP_OVER_IPV4 if src.version == 4 else TCP_OVER_IPV6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    if identity is not None:
        body += _tlv(PEER_IDENTITY_TLV, identity.encode())
    if hostname is not None:
        body += _tlv(SERVICE_HOSTNAME_TLV, hostname.encode())
    return SIGNATURE + bytes([VERSION_2_PROXY, family]) + struct.pack("!H", len(body)) + body


def _tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def connect(port: int, preamble: bytes, timeout: float = 10.0) -> socket.socket:
    """A connection to the waypoint on loopback that has sent ``preamble`` (the header)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if preamble:
        sock.sendall(preamble)
    return sock


def http1(
    port: int, preamble: bytes, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.1 request after the header: (status, body)."""
    sock = connect(port, preamble)
    try:
        lines = [f"GET {path} HTTP/1.1", "Host: orders", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()
    finally:
        sock.close()


def closed_without_reply(port: int, preamble: bytes, request: bytes) -> bool:
    """True when the waypoint closes the connection without sending a byte."""
    sock = connect(port, preamble)
    try:
        try:
            sock.sendall(request)
        except OSError:
            return True
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
    finally:
        sock.close()


def http2(port: int, preamble: bytes, path: str) -> tuple[int, bytes]:
    """One HTTP/2 request with prior knowledge after the header: (status, body)."""
    sock = connect(port, preamble)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(":method", "GET"), (":scheme", "http"), (":authority", "orders"), (":path", path)],
        end_stream=True,
    )
    sock.sendall(conn.data_to_send())
    status, body = 0, b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the response ended")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    return status, body
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()

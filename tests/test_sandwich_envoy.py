"""Istio's ztunnel "sandwich" end to end: Kubernetes objects with the inbound-binding
annotation → translate → the rendered waypoint on a real Envoy, with the real extauthz server,
fed by a ztunnel stand-in (tests/ztunnel_standin.py) that writes PROXY v2 headers as ztunnel
does.

Shows that routes apply by the header's destination (the Service VIP), that the identity TLV
is the request's source principal for ext_authz and for the access log (a client-sent header
notwithstanding), that HTTP/2 with prior knowledge works inside too, that upstream traffic
leaves in plain TCP to the pod even though its namespace is in the mesh, and that a missing
header, a v1 header or an unknown VIP gets the connection closed. One Envoy and one extauthz
process serve the module.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests import conftest, ztunnel_standin
from tests.test_policy_authz_envoy import _wait_ready
from waypoint import model, names, policy, simulate, translate, wellknown
from waypoint.envoy import bootstrap, options
from waypoint.local import echo
from waypoint.runtime import envoy_process

TD = "cluster.local"
VIP = "10.96.2.10"
CLIENT_ID = names.spiffe_id(TD, "client", "sleep")
OTHER_ID = names.spiffe_id(TD, "other", "sleep")
CLIENT_ADDRESS = ("10.244.1.7", 40312)

REGO = """
package envoy.authz

import rego.v1

default mesh_only := false

mesh_only if input.source_principal == "spiffe://cluster.local/ns/client/sa/sleep"

principals := {
    "allowed": true,
    "headers": {"x-seen-source": input.source_principal},
}
"""


def _objects(echo_port: int) -> list[dict[str, Any]]:
    text = f"""
apiVersion: v1
kind: Namespace
metadata:
  name: ns1
  labels: {{istio.io/use-waypoint: waypoint, istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: ns1
  annotations: {{ambient.istio.io/waypoint-inbound-binding: PROXY/15088}}
spec:
  gatewayClassName: waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: orders, namespace: ns1}}
spec:
  clusterIP: {VIP}
  selector: {{app: orders}}
  ports:
  - {{name: http, port: 80, targetPort: {echo_port}}}
  - {{name: tcp-raw, port: 9000, targetPort: {echo_port}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: orders-1, namespace: ns1, labels: {{app: orders}}}}
spec: {{serviceAccountName: orders}}
status: {{podIP: 127.0.0.1}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: orders-a, namespace: ns1, labels: {{kubernetes.io/service-name: orders}}}}
addressType: IPv4
ports: [{{name: http, port: {echo_port}}}, {{name: tcp-raw, port: {echo_port}}}]
endpoints:
- addresses: [127.0.0.1]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: orders-1, namespace: ns1}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: orders, namespace: ns1}}
spec:
  parentRefs: [{{group: "", kind: Service, name: orders, port: 80}}]
  rules:
  - name: mesh
    matches: [{{path: {{type: PathPrefix, value: /mesh}}}}]
    backendRefs: [{{name: orders, port: 80}}]
  - name: who
    matches: [{{path: {{type: PathPrefix, value: /who}}}}]
    backendRefs: [{{name: orders, port: 80}}]
  - name: tagged
    matches: [{{path: {{type: PathPrefix, value: /tagged}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{add: [{{name: x-route, value: tagged}}]}}
    backendRefs: [{{name: orders, port: 80}}]
"""
    policies = [
        {
            "apiVersion": wellknown.POLICY_API_VERSION,
            "kind": "ExtAuthzPolicy",
            "metadata": {"name": name, "namespace": "ns1"},
            "spec": {
                "targetRefs": [
                    {
                        "group": "gateway.networking.k8s.io",
                        "kind": "HTTPRoute",
                        "name": "orders",
                        "sectionName": name,
                    }
                ],
                "decision": decision,
                "timeout": "2s",
            },
        }
        for name, decision in (("mesh", "envoy/authz/mesh_only"), ("who", "envoy/authz/principals"))
    ]
    return [*yaml.safe_load_all(text), *policies, _authorization_policy()]


def _authorization_policy() -> dict[str, Any]:
    """Istio DENY rules on the PROXY header's identity and source address (port 80 only, so
    the TCP port keeps working: Istio widens a DENY's HTTP-only fields on TCP)."""
    port_80 = {"ports": ["80"]}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny", "namespace": "ns1"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "orders"}],
            "action": "DENY",
            "rules": [
                {
                    "from": [{"source": {"notPrincipals": ["cluster.local/ns/client/sa/sleep"]}}],
                    "to": [{"operation": {**port_80, "paths": ["/tagged/private*"]}}],
                },
                {
                    "from": [{"source": {"ipBlocks": ["10.244.1.0/24"]}}],
                    "to": [{"operation": {**port_80, "paths": ["/tagged/ipblock"]}}],
                },
            ],
        },
    }


@dataclasses.dataclass
class World:
    opts: options.BootstrapOptions
    proxy: envoy_process.EnvoyProcess
    waypoint: model.Waypoint
    bootstrap_yaml: str

    @property
    def port(self) -> int:
        return self.opts.proxy_port

    def preamble(self, identity: str | None = CLIENT_ID, vip: str = VIP, port: int = 80) -> bytes:
        return ztunnel_standin.header(
            CLIENT_ADDRESS, (vip, port), identity, "orders.ns1.svc.cluster.local"
        )

    def get(self, path: str, identity: str | None = CLIENT_ID, **headers: str) -> tuple[int, bytes]:
        return ztunnel_standin.http1(self.port, self.preamble(identity), path, headers)

    def echo(self, path: str, identity: str | None = CLIENT_ID, **headers: str) -> echo.EchoReport:
        status, body = self.get(path, identity, **headers)
        assert status == 200, (status, body)
        return echo.parse_echo(body)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sandwich")
    grpc_port, metrics_port = conftest.free_port(), conftest.free_port()
    opts = conftest.loopback_options(
        trust_domain=TD,
        cert_dir=str(tmp / "no-certs"),  # never read: a sandwiched waypoint has no TLS
        proxy_port=conftest.free_port(),
        extauthz_address=f"127.0.0.1:{grpc_port}",
    )
    backend = echo.EchoServer("orders", "ns1", http_ports=(0,))
    backend.start_background()
    process: subprocess.Popen[bytes] | None = None
    try:
        translation = translate.translate(_objects(backend.http_ports[0]), TD)
        waypoint = translation.waypoint("ns1", "waypoint")
        assert waypoint is not None, translation.statuses
        rego = tmp / "policy.rego"
        rego.write_text(REGO)
        config = policy.extauthz_config(
            waypoint,
            listen=f"127.0.0.1:{grpc_port}",
            modules=(str(rego),),
            metrics_listen=f"127.0.0.1:{metrics_port}",
        )
        (tmp / "extauthz.yaml").write_text(yaml.safe_dump(config))
        process = subprocess.Popen(
            [sys.executable, "-m", "extauthz.cli", "serve", "--config", str(tmp / "extauthz.yaml")],
            stdout=(tmp / "extauthz.out").open("wb"),
            stderr=subprocess.STDOUT,
        )
        _wait_ready(metrics_port, process)
        text = bootstrap.to_yaml(bootstrap.build(waypoint, opts))
        envoy_config = tmp / "envoy.yaml"
        envoy_config.write_text(text)
        with envoy_process.running(envoy_config, opts.admin_port, tmp / "envoy.log") as proxy:
            yield World(opts, proxy, waypoint, text)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=15)
        backend.stop_background()


def test_the_waypoint_holds_no_mesh_certificate(world: World) -> None:
    assert world.waypoint.proxy_port == 15088
    assert "tls" not in world.bootstrap_yaml.lower()
    assert "connect_originate" not in world.bootstrap_yaml
    assert "connect_terminate" not in world.bootstrap_yaml


def test_routes_apply_and_upstream_is_plain_to_the_pod(world: World) -> None:
    report = world.echo("/tagged/x")
    assert report.header("x-route") == "tagged"
    assert report.url == "/tagged/x"


def test_ext_authz_sees_the_tlv_identity(world: World) -> None:
    assert world.echo("/who").header("x-seen-source") == CLIENT_ID


def test_a_client_cannot_spoof_its_principal(world: World) -> None:
    forged = {"x-waypoint-source-principal": CLIENT_ID}
    assert world.echo("/who", OTHER_ID, **forged).header("x-seen-source") == OTHER_ID


def test_policy_decides_on_the_tlv_identity(world: World) -> None:
    assert world.get("/mesh")[0] == 200
    assert world.get("/mesh", OTHER_ID)[0] == 403
    assert world.get("/mesh", None)[0] == 403  # no identity TLV: no principal


def test_no_identity_tlv_means_no_principal(world: World) -> None:
    report = world.echo("/who", None)
    assert report.header("x-waypoint-source-principal") is None
    assert report.header("x-seen-source") in (None, "")


def test_a_tcp_port_is_proxied_byte_for_byte(world: World) -> None:
    status, body = ztunnel_standin.http1(world.port, world.preamble(port=9000), "/raw")
    assert status == 200
    report = echo.parse_echo(body)
    assert report.url == "/raw"
    assert report.header("x-waypoint-source-principal") is None  # no HTTP processing here


def test_http2_with_prior_knowledge_inside(world: World) -> None:
    status, body = ztunnel_standin.http2(world.port, world.preamble(), "/who")
    assert status == 200
    assert echo.parse_echo(body).header("x-seen-source") == CLIENT_ID


def test_the_access_log_names_the_source_principal(world: World) -> None:
    world.get("/tagged/logged")
    # Envoy flushes access logs every 10 s; /reopen_logs flushes them now.
    url = f"{world.proxy.admin_url}/reopen_logs"
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5).read()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(
            line.get("path") == "/tagged/logged" and line.get("source_principal") == CLIENT_ID
            for line in _log_lines(world.proxy.log())
        ):
            return
        time.sleep(0.1)
    raise AssertionError(world.proxy.log()[-2000:])


def _log_lines(text: str) -> list[dict[str, Any]]:
    return conftest.json_lines(text)


REQUEST = b"GET /who HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"


def test_a_connection_without_a_proxy_header_is_refused(world: World) -> None:
    assert ztunnel_standin.closed_without_reply(world.port, b"", REQUEST)


def test_a_proxy_v1_header_is_refused(world: World) -> None:
    v1 = f"PROXY TCP4 {CLIENT_ADDRESS[0]} {VIP} {CLIENT_ADDRESS[1]} 80\r\n".encode()
    assert ztunnel_standin.closed_without_reply(world.port, v1, REQUEST)


def test_an_unknown_vip_or_port_is_refused(world: World) -> None:
    assert ztunnel_standin.closed_without_reply(
        world.port, world.preamble(vip="10.96.9.9"), REQUEST
    )
    assert ztunnel_standin.closed_without_reply(world.port, world.preamble(port=8080), REQUEST)
    # ... while the same bytes to the known VIP get an answer.
    assert not ztunnel_standin.closed_without_reply(world.port, world.preamble(), REQUEST)


def _stat(world: World, name: str) -> int:
    return world.proxy.counter(name)


def test_refusals_are_counted(world: World) -> None:
    no_header = _stat(world, "proxy_proto.ztunnel.not_found_disallowed")
    unknown = _stat(world, "listener.proxy_terminate.no_filter_chain_match")
    ztunnel_standin.closed_without_reply(world.port, b"", REQUEST)
    ztunnel_standin.closed_without_reply(world.port, world.preamble(vip="10.96.9.9"), REQUEST)
    assert _stat(world, "proxy_proto.ztunnel.not_found_disallowed") == no_header + 1
    assert _stat(world, "listener.proxy_terminate.no_filter_chain_match") == unknown + 1


def test_explain_says_it_does_not_follow_the_sandwich(world: World) -> None:
    request = simulate.Request(authority=f"{VIP}:80", path="/who")
    with pytest.raises(simulate.UnsupportedConfig, match="sandwich"):
        simulate.trace(bootstrap.build(world.waypoint, world.opts), request)


def test_authorization_policy_reads_the_proxy_identity_and_address(world: World) -> None:
    assert world.get("/tagged/private")[0] == 200
    assert world.get("/tagged/private", OTHER_ID)[0] == 403  # notPrincipals: the TLV identity
    assert world.get("/tagged/private", None)[0] == 403  # no TLV: no principal
    assert world.get("/tagged/ipblock")[0] == 403  # ipBlocks: the PROXY header's source
    assert world.get("/tagged/x")[0] == 200

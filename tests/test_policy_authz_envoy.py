"""ExtAuthzPolicy and RequestAuthentication end to end: Kubernetes objects → translate →
Envoy bootstrap and extauthz config → a real Envoy calling the real extauthz server.

Shows that each route asks its own Rego decision (context extensions), that a route can
require a JWT (401 without one), that the request body reaches the policy, and that the
source and destination SPIFFE principals reach the policy input, a client-sent header
notwithstanding. One Envoy and one extauthz process serve the whole module.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests import conftest
from tests.extauthz import support
from waypoint import model, names, policy, translate, wellknown
from waypoint.envoy import bootstrap, options
from waypoint.local import ca as dev_ca
from waypoint.local import echo
from waypoint.local.hbone import client as hbone_client
from waypoint.runtime import envoy_process, sds

TD = "cluster.local"
VIP = "10.96.2.10"
ORDERS = names.authority(VIP, 80)
CLIENT_ID = names.spiffe_id(TD, "client", "sleep")
ORDERS_ID = names.spiffe_id(TD, "ns1", "orders")

REGO = """
package envoy.authz

import rego.v1

default orders_read := false

orders_read if input.attributes.request.http.method == "GET"

default orders_write := false

orders_write if input.jwt.claims.role == "writer"

default body_check := false

body_check if input.parsed_body.qty == 3

default mesh_only := false

mesh_only if input.source_principal == "spiffe://cluster.local/ns/client/sa/sleep"

# An AuthorizationPolicy with action CUSTOM asks the sidecar's default decision.
default allow := false

allow if input.attributes.request.http.headers["x-custom"] == "ok"

principals := {
    "allowed": true,
    "headers": {
        "x-seen-source": input.source_principal,
        "x-seen-destination": input.destination_principal,
    },
}
"""


def _rule(name: str, prefix: str) -> dict[str, Any]:
    return {
        "name": name,
        "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
        "backendRefs": [{"name": "orders", "port": 80}],
    }


def _authz(name: str, section: str | None, decision: str, **spec: Any) -> dict[str, Any]:
    target: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}
    target["name"] = "orders"
    if section is not None:
        target["sectionName"] = section
    return {
        "apiVersion": wellknown.POLICY_API_VERSION,
        "kind": "ExtAuthzPolicy",
        "metadata": {"name": name, "namespace": "ns1"},
        "spec": {"targetRefs": [target], "decision": decision, "timeout": "2s", **spec},
    }


def _objects(echo_port: int) -> list[dict[str, Any]]:
    """The world, as a user writes it; the endpoint is the local echo server."""
    text = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: ns1, labels: {{istio.io/use-waypoint: waypoint}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: ns1}}
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
  ports: [{{name: http, port: 80, targetPort: {echo_port}}}]
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
ports: [{{name: http, port: {echo_port}}}]
endpoints:
- addresses: [127.0.0.1]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: orders-1, namespace: ns1}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: corp, namespace: ns1}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}]
  jwtRules:
  - issuer: {support.ISSUER}
    audiences: [{support.AUDIENCE}]
    jwks: '{json.dumps(support.TRUSTED_JWKS)}'
    outputClaimToHeaders: [{{header: x-jwt-role, claim: role}}]
"""
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "orders", "namespace": "ns1"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 80}],
            "rules": [
                _rule("read", "/read"),
                _rule("write", "/write"),
                _rule("body", "/body"),
                _rule("mesh", "/mesh"),
                _rule("who", "/who"),
                _rule("free", "/free"),
            ],
        },
    }
    policies = [
        _authz("read", "read", "envoy/authz/orders_read"),
        _authz("write", "write", "envoy/authz/orders_write", jwt={"requirement": "Required"}),
        _authz("body", "body", "envoy/authz/body_check", withRequestBody={"maxBytes": 1024}),
        _authz("mesh", "mesh", "envoy/authz/mesh_only"),
        _authz("who", "who", "envoy/authz/principals"),
    ]
    custom = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "custom", "namespace": "ns1"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "orders"}],
            "action": "CUSTOM",
            "provider": {"name": "waypoint-extauthz"},
            "rules": [{"to": [{"operation": {"paths": ["/free/custom*"]}}]}],
        },
    }
    return [*yaml.safe_load_all(text), route, *policies, custom]


@dataclasses.dataclass
class World:
    opts: options.BootstrapOptions
    proxy: envoy_process.EnvoyProcess
    ca: dev_ca.CertificateAuthority
    translation: model.Translation

    def request(self, path: str, namespace: str = "client", **kw: Any) -> hbone_client.Response:
        ident = self.ca.issue_workload(namespace, "sleep")
        client = hbone_client.SyncHboneClient(
            ("127.0.0.1", self.opts.hbone_port),
            ident.ssl_context(server=False),
            expected_trust_domain=TD,
            timeout=10.0,
        )
        with client as hbone:
            return hbone.request(ORDERS, path=path, **kw)


def _wait_ready(metrics_port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"extauthz exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("extauthz did not become ready")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("policy-authz")
    grpc_port, metrics_port = conftest.free_port(), conftest.free_port()
    ca = dev_ca.CertificateAuthority.create(TD)
    ca.issue_workload("ns1", "waypoint").write(tmp / "certs")
    opts = conftest.loopback_options(
        trust_domain=TD,
        cert_dir=str(tmp / "certs"),
        sds_dir=str(tmp / "sds"),
        hbone_port=conftest.free_port(),
        extauthz_address=f"127.0.0.1:{grpc_port}",
    )
    backend = echo.EchoServer("orders", "ns1", http_ports=(0,))
    backend.start_background()
    process: subprocess.Popen[bytes] | None = None
    try:
        translation = translate.translate(_objects(backend.http_ports[0]), TD)
        waypoint = translation.waypoint("ns1", "waypoint")
        assert waypoint is not None
        assert waypoint.needs_extauthz
        rego = tmp / "policy.rego"
        rego.write_text(REGO)
        config = policy.extauthz_config(
            waypoint,
            listen=f"127.0.0.1:{grpc_port}",
            modules=(str(rego),),
            metrics_listen=f"127.0.0.1:{metrics_port}",
        )
        config["decision_log"] = str(tmp / "decisions.log")
        (tmp / "extauthz.yaml").write_text(yaml.safe_dump(config))
        process = subprocess.Popen(
            [sys.executable, "-m", "extauthz.cli", "serve", "--config", str(tmp / "extauthz.yaml")],
            stdout=(tmp / "extauthz.out").open("wb"),
            stderr=subprocess.STDOUT,
        )
        _wait_ready(metrics_port, process)
        sds.write_files(opts)
        envoy_config = tmp / "envoy.yaml"
        envoy_config.write_text(bootstrap.to_yaml(bootstrap.build(waypoint, opts)))
        with envoy_process.running(envoy_config, opts.admin_port, tmp / "envoy.log") as proxy:
            yield World(opts, proxy, ca, translation)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=15)
        backend.stop_background()


def _echo(resp: hbone_client.Response) -> echo.EchoReport:
    assert resp.status == 200, (resp.status, resp.text)
    return echo.parse_echo(resp.body)


def _bearer(**claims: Any) -> list[tuple[str, str]]:
    return [("authorization", "Bearer " + support.token(support.claims(**claims)))]


def test_all_policies_accepted(world: World) -> None:
    for status in world.translation.statuses:
        if status.ref.kind in ("ExtAuthzPolicy", "RequestAuthentication", "AuthorizationPolicy"):
            assert status.ok, status


def test_routes_pick_different_decisions(world: World) -> None:
    assert world.request("/read").status == 200
    assert world.request("/read", method="POST", body=b"x").status == 403
    # The same request on another route meets another decision.
    assert (
        world.request("/write", method="POST", body=b"x", headers=_bearer(role="writer")).status
        == 200
    )
    assert world.request("/write", headers=_bearer(role="reader")).status == 403


def test_required_jwt_is_401_without_a_token(world: World) -> None:
    missing = world.request("/write")
    assert missing.status == 401
    assert missing.header("www-authenticate") is not None
    # /read does not require one.
    assert world.request("/read").status == 200
    assert world.request("/write", headers=_bearer(role="writer", exp=1)).status == 401


def test_claims_reach_the_upstream_as_headers(world: World) -> None:
    report = _echo(world.request("/write", headers=_bearer(role="writer")))
    assert report.header("x-jwt-role") == "writer"


def test_request_body_reaches_the_policy(world: World) -> None:
    json_type = [("content-type", "application/json")]
    ok = world.request("/body", method="POST", body=b'{"qty": 3}', headers=json_type)
    assert ok.status == 200
    bad = world.request("/body", method="POST", body=b'{"qty": 4}', headers=json_type)
    assert bad.status == 403


def test_principals_reach_the_policy_input(world: World) -> None:
    report = _echo(world.request("/who"))
    assert report.header("x-seen-source") == CLIENT_ID
    assert report.header("x-seen-destination") == ORDERS_ID
    assert world.request("/mesh").status == 200
    assert world.request("/mesh", namespace="other").status == 403


def test_a_client_cannot_spoof_its_principal(world: World) -> None:
    forged = [("x-waypoint-source-principal", CLIENT_ID)]
    assert world.request("/mesh", namespace="other", headers=forged).status == 403
    report = _echo(world.request("/who", namespace="other", headers=forged))
    assert report.header("x-seen-source") == names.spiffe_id(TD, "other", "sleep")


def test_routes_without_a_policy_skip_extauthz(world: World) -> None:
    assert world.request("/read").status == 200
    before = _stat(world, "ext_authz.ok")
    assert before >= 1
    assert world.request("/free", method="POST", body=b"x").status == 200
    assert _stat(world, "ext_authz.ok") == before


def _stat(world: World, suffix: str) -> int:
    return world.proxy.counter("http.inbound-vip_80_orders_ns1_svc_cluster_local." + suffix)


def test_authorization_policy_custom_asks_extauthz_only_where_it_matches(world: World) -> None:
    assert world.request("/free/custom").status == 403
    assert world.request("/free/custom", headers=[("x-custom", "ok")]).status == 200
    before = _custom_checks(world)
    assert world.request("/free/other").status == 200
    assert _custom_checks(world) == before
    # Authentication comes first: a bad token never reaches the CUSTOM check.
    bad = world.request("/free/custom", headers=_bearer(exp=1))
    assert bad.status == 401
    assert _custom_checks(world) == before


def _custom_checks(world: World) -> int:
    """Checks the CUSTOM ext_authz filter made (its stats carry no filter name: count all)."""
    total = 0
    for line in world.proxy.admin_get("/stats?filter=ext_authz").splitlines():
        key, _, value = line.partition(": ")
        if key.startswith("http.inbound-vip_80_orders") and key.rsplit(".", 1)[-1] in (
            "ok",
            "denied",
            "error",
        ):
            total += int(value)
    return total

"""Istio AuthorizationPolicy and RequestAuthentication, enforced by Envoy itself: a table.

Every row is one request through a real Envoy (the rendered waypoint config) from our HBONE
client, with a SPIFFE identity issued by the dev CA and, where the row says so, an RS256
token: policy set × identity × method/path/host/headers × token → 200, 403 or 401. Each row
names the documented rule it encodes (istio.io authorization-policy and
request-authentication references; see docs/policies.md).

One Envoy serves the whole table: each policy set is attached to its own Service, so the
sets do not see each other, while the waypoint-wide RequestAuthentication, the Gateway's
DENY policy and the mesh-wide (GatewayClass) DENY policy apply to every Service.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import conftest
from tests.extauthz import support
from waypoint import model, names, simulate, translate
from waypoint.envoy import bootstrap, options
from waypoint.envoy import resources as envoy_resources
from waypoint.local import ca as dev_ca
from waypoint.local import echo
from waypoint.local.hbone import client as hbone_client
from waypoint.local.hbone import errors as hbone_errors
from waypoint.runtime import envoy_process, sds

TD = "cluster.local"
GW = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
# Policy sets: Service name → (VIP, AuthorizationPolicy specs with their annotations).
SLEEP = "cluster.local/ns/client/sa/sleep"


def _svc(name: str) -> dict[str, str]:
    return {"group": "", "kind": "Service", "name": name}


POLICY_SETS: dict[str, tuple[str, list[tuple[str, dict[str, Any], dict[str, str]]]]] = {
    "paths": (
        "10.96.3.1",
        [
            (
                "allow",
                {
                    "rules": [
                        {
                            "from": [{"source": {"principals": [SLEEP]}}],
                            "to": [
                                {"operation": {"methods": ["GET"], "paths": ["/api/*", "/exact"]}}
                            ],
                        },
                        {
                            "from": [{"source": {"namespaces": ["ops"]}}],
                            "to": [
                                {
                                    "operation": {
                                        "paths": [
                                            "/admin/{*}/view",
                                            "/files/{**}",
                                            "/{**}/report.pdf",
                                        ]
                                    }
                                }
                            ],
                        },
                        {"to": [{"operation": {"paths": ["*.png"], "notMethods": ["DELETE"]}}]},
                        {
                            "from": [{"source": {"principals": ["*/sa/robot"]}}],
                            "to": [{"operation": {"hosts": ["orders.example", "*.corp.example"]}}],
                        },
                    ]
                },
                {},
            )
        ],
    ),
    "deny": (
        "10.96.3.2",
        [
            (
                "deny",
                {
                    "action": "DENY",
                    "rules": [
                        {"from": [{"source": {"notNamespaces": ["client", "ops"]}}]},
                        {"to": [{"operation": {"paths": ["/private*"]}}]},
                        {
                            "from": [{"source": {"principals": [SLEEP]}}],
                            "to": [{"operation": {"methods": ["DELETE"]}}],
                        },
                    ],
                },
                {},
            ),
            ("allow-all", {"rules": [{}]}, {}),
        ],
    ),
    "jwt": (
        "10.96.3.3",
        [
            (
                "allow",
                {
                    "rules": [
                        {"from": [{"source": {"requestPrincipals": [f"{support.ISSUER}/alice"]}}]},
                        {
                            "from": [{"source": {"requestPrincipals": ["*"]}}],
                            "when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}],
                        },
                        {"to": [{"operation": {"paths": ["/public"]}}]},
                        {
                            "when": [
                                {"key": "request.auth.claims[org][team]", "values": ["payments"]}
                            ]
                        },
                        {"when": [{"key": "request.auth.presenter", "values": ["web-app"]}]},
                        {
                            "when": [
                                {"key": "request.auth.audiences", "values": ["orders"]},
                                {"key": "request.auth.principal", "values": ["*/carol"]},
                            ]
                        },
                    ]
                },
                {},
            ),
            (
                "deny-anonymous",
                {
                    "action": "DENY",
                    "rules": [
                        {
                            "from": [{"source": {"notRequestPrincipals": ["*"]}}],
                            "to": [{"operation": {"paths": ["/secure*"]}}],
                        }
                    ],
                },
                {},
            ),
        ],
    ),
    "when": (
        "10.96.3.4",
        [
            (
                "allow",
                {
                    "rules": [
                        {
                            "when": [
                                {"key": "request.headers[x-tenant]", "values": ["gold", "plat*"]}
                            ]
                        },
                        {
                            "when": [
                                {"key": "source.ip", "values": ["127.0.0.1/32"]},
                                {"key": "request.headers[x-via-ip]", "values": ["*"]},
                            ]
                        },
                        {"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]},
                        {
                            "when": [
                                {"key": "source.principal", "values": ["cluster.local/ns/ops/*"]}
                            ]
                        },
                        {
                            "when": [
                                {"key": "source.namespace", "values": ["shop"]},
                                {"key": "destination.port", "values": ["80"]},
                            ]
                        },
                        {"when": [{"key": "destination.port", "values": ["8080"]}]},
                        {"to": [{"operation": {"ports": ["80"], "paths": ["/port80"]}}]},
                        {"to": [{"operation": {"notPorts": ["80"], "paths": ["/notport"]}}]},
                        {
                            "when": [
                                {"key": "request.headers[x-tenant]", "notValues": ["bronze"]},
                                {"key": "request.headers[x-team]", "values": ["blue"]},
                            ]
                        },
                    ]
                },
                {},
            ),
            (
                "deny-local",
                {
                    "action": "DENY",
                    "rules": [
                        {
                            "from": [{"source": {"ipBlocks": ["127.0.0.0/8"]}}],
                            "to": [{"operation": {"paths": ["/local-deny"]}}],
                        }
                    ],
                },
                {},
            ),
        ],
    ),
    "empty-allow": ("10.96.3.5", [("nothing", {}, {})]),
    "allow-all": (
        "10.96.3.6",
        [("everything", {"rules": [{}]}, {}), ("deny-nothing", {"action": "DENY"}, {})],
    ),
    "authn-only": ("10.96.3.7", []),
    "dry-run": (
        "10.96.3.8",
        [
            (
                "deny-admin",
                {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]},
                {"istio.io/dry-run": "true"},
            ),
            (
                "allow-nobody",
                {"rules": [{"from": [{"source": {"namespaces": ["nobody"]}}]}]},
                {"istio.io/dry-run": "true"},
            ),
            (
                "audit",
                {"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/audit"]}}]}]},
                {},
            ),
        ],
    ),
}


DB_VIP = "10.96.3.20"


def _tcp_world(port: int) -> list[dict[str, Any]]:
    """A TCP Service: the policy's HTTP-only parts are dropped (ALLOW) or ignored (DENY)."""
    service = _service("db", DB_VIP, port)
    service[0]["spec"]["ports"] = [
        {"name": "db", "port": 5432, "targetPort": port, "appProtocol": "tcp"}
    ]
    service[1]["ports"] = [{"name": "db", "port": port}]
    db = [_svc("db")]
    allow = {
        "rules": [
            {"from": [{"source": {"namespaces": ["client"]}}]},
            {
                "from": [{"source": {"namespaces": ["ops"]}}],
                "to": [{"operation": {"methods": ["GET"]}}],
            },
        ]
    }
    deny = {
        "action": "DENY",
        "rules": [
            {
                "from": [{"source": {"principals": ["cluster.local/ns/client/sa/other"]}}],
                "when": [{"key": "request.headers[x-never-sent]", "values": ["1"]}],
            }
        ],
    }
    return [*service, _policy("ns1", "db-allow", db, allow), _policy("ns1", "db-deny", db, deny)]


def _objects(echo_port: int, tcp_port: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "ns1", "labels": {"istio.io/use-waypoint": "waypoint"}},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "ns1"},
            "spec": {
                "gatewayClassName": "waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "corp", "namespace": "ns1"},
            "spec": {
                "targetRefs": [GW],
                "jwtRules": [
                    {
                        "issuer": support.ISSUER,
                        "audiences": [support.AUDIENCE],
                        "jwks": json.dumps(support.TRUSTED_JWKS),
                    }
                ],
            },
        },
        _policy(
            "ns1",
            "gateway-deny",
            [GW],
            {
                "action": "DENY",
                "rules": [{"when": [{"key": "request.headers[x-block]", "values": ["yes"]}]}],
            },
        ),
        _policy(
            "istio-system",
            "mesh-deny",
            [{"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "waypoint"}],
            {
                "action": "DENY",
                "rules": [{"to": [{"operation": {"paths": ["/mesh-denied"]}}]}],
            },
        ),
    ]
    out += _tcp_world(tcp_port)
    for service, (vip, policies) in POLICY_SETS.items():
        out += _service(service, vip, echo_port)
        for name, spec, notes in policies:
            out.append(_policy("ns1", f"{service}-{name}", [_svc(service)], spec, notes))
    return out


def _policy(
    namespace: str,
    name: str,
    targets: list[dict[str, str]],
    spec: dict[str, Any],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": {"targetRefs": targets, **spec},
    }


def _service(name: str, vip: str, echo_port: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "ns1"},
            "spec": {
                "clusterIP": vip,
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "targetPort": echo_port}],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-a",
                "namespace": "ns1",
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": echo_port}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        },
    ]


# --- tokens -----------------------------------------------------------------------------------

OTHER_ISSUER = "https://other.test"


def _token(kind: str) -> str:
    """RS256 tokens by name; the signing key is trusted unless the name says otherwise."""
    if kind == "bad-signature":
        return support.token(support.claims(sub="alice"), key=support.ATTACKER_KEY)
    if kind == "expired":
        past = time.time() - 3600
        return support.token(support.claims(now=past, sub="alice"))
    if kind == "wrong-audience":
        return support.token(support.claims(sub="alice", aud="billing"))
    if kind == "unknown-issuer":
        return support.token(support.claims(sub="alice", iss=OTHER_ISSUER))
    extra: dict[str, Any] = {
        "alice": {"sub": "alice"},
        "bob": {"sub": "bob"},
        "bob-admin-list": {"sub": "bob", "groups": ["dev", "admin"]},
        "bob-admin-string": {"sub": "bob", "groups": "admin"},
        "bob-dev": {"sub": "bob", "groups": ["dev"]},
        "bob-payments": {"sub": "bob", "org": {"team": "payments"}},
        "bob-billing-team": {"sub": "bob", "org": {"team": "billing"}},
        "bob-web-app": {"sub": "bob", "azp": "web-app"},
        "carol": {"sub": "carol"},
        "carol-two-audiences": {"sub": "carol", "aud": ["other", "orders"]},
    }[kind]
    return support.token(support.claims(**extra))


@dataclasses.dataclass(frozen=True)
class Case:
    service: str
    identity: str  # namespace/serviceaccount of the client's SPIFFE ID
    path: str
    expect: int
    rule: str  # the documented rule this row encodes
    method: str = "GET"
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    token: str | None = None

    @property
    def id(self) -> str:
        extra = f" token={self.token}" if self.token else ""
        extra += f" host={self.host}" if self.host else ""
        extra += "".join(f" {k}={v}" for k, v in self.headers)
        return f"{self.service}:{self.identity}:{self.method} {self.path}{extra}->{self.expect}"


# Envoy's jwt_authn (and so Istio) answers a verified token for another audience with 403.
AUDIENCE_403 = "a valid token for another audience is rejected (403, jwt_authn's answer)"
ALLOW_MATCH = "ALLOW: a request that matches a rule of an ALLOW policy is allowed"
ALLOW_NONE = "ALLOW: when ALLOW policies apply, a request matching none of them is denied"
CASES = [
    # --- paths: principals, methods, exact/prefix/suffix paths, templates, hosts ------------
    Case(
        "paths",
        "client/sleep",
        "/api/items",
        200,
        ALLOW_MATCH + " (principal, method, prefix path)",
    ),
    Case(
        "paths",
        "client/sleep",
        "/api/items",
        403,
        ALLOW_NONE + " (methods: GET only)",
        method="POST",
    ),
    Case("paths", "client/sleep", "/exact", 200, ALLOW_MATCH + " (exact path)"),
    Case(
        "paths", "client/sleep", "/exact/more", 403, ALLOW_NONE + " (an exact path is not a prefix)"
    ),
    Case("paths", "client/sleep", "/exact?q=1", 200, "paths match the path without its query"),
    Case(
        "paths",
        "client/other",
        "/api/items",
        403,
        ALLOW_NONE + " (principals: another service account)",
    ),
    Case("paths", "ops/deployer", "/admin/a/view", 200, "paths: {*} matches one segment"),
    Case("paths", "ops/deployer", "/admin/a/b/view", 403, "paths: {*} matches exactly one segment"),
    Case(
        "paths",
        "ops/deployer",
        "/files/a/b/c.txt",
        200,
        "paths: {**} matches any number of segments",
    ),
    Case(
        "paths",
        "client/sleep",
        "/admin/a/view",
        403,
        ALLOW_NONE + " (namespaces: client is not ops)",
    ),
    Case("paths", "ops/deployer", "/files", 403, "paths: /files/{**} needs more than /files"),
    Case("paths", "ops/deployer", "/files/", 200, "paths: /files/{**} takes an empty segment"),
    Case("paths", "ops/deployer", "/a/b/report.pdf", 200, "paths: {**} before a literal"),
    Case("paths", "ops/deployer", "/report.pdf", 403, "paths: {**} before a literal, none given"),
    Case(
        "paths",
        "shop/robot2",
        "/img/logo.png",
        200,
        "paths: '*.png' is a suffix match; no from = any source",
    ),
    Case(
        "paths", "shop/robot2", "/img/logo.png", 403, "notMethods: DELETE excluded", method="DELETE"
    ),
    Case("paths", "shop/robot", "/x", 200, "hosts: exact host", host="orders.example"),
    Case(
        "paths",
        "shop/robot",
        "/x",
        200,
        "hosts: compared case-insensitively",
        host="ORDERS.example",
    ),
    Case(
        "paths",
        "shop/robot",
        "/x",
        200,
        "hosts: '*.corp.example' is a suffix match",
        host="api.corp.example",
    ),
    Case("paths", "shop/robot", "/x", 403, ALLOW_NONE + " (hosts: no match)", host="evil.example"),
    Case(
        "paths",
        "shop/robot2",
        "/x",
        403,
        "principals: '*/sa/robot' is a suffix match",
        host="orders.example",
    ),
    # --- deny: DENY before ALLOW ---------------------------------------------------------
    Case("deny", "client/sleep", "/x", 200, "ALLOW with rules [{}] allows every request"),
    Case("deny", "shop/robot", "/x", 403, "DENY: notNamespaces matches every other namespace"),
    Case("deny", "ops/deployer", "/private/a", 403, "DENY is evaluated before ALLOW and wins"),
    Case("deny", "client/sleep", "/privately", 403, "DENY: '/private*' is a prefix match"),
    Case(
        "deny", "client/sleep", "/x", 403, "DENY: principal and method both match", method="DELETE"
    ),
    Case(
        "deny", "ops/deployer", "/x", 200, "DENY: all fields of a rule must match", method="DELETE"
    ),
    Case("deny", "client/other", "/x", 200, "DENY: no rule matches, ALLOW all decides"),
    # --- jwt: RequestAuthentication + requestPrincipals + claims ---------------------------
    Case(
        "jwt",
        "client/sleep",
        "/x",
        403,
        "no token passes authentication; ALLOW needs a requestPrincipal",
    ),
    Case("jwt", "client/sleep", "/public", 200, "no token: allowed where a rule needs no token"),
    Case(
        "jwt",
        "client/sleep",
        "/public",
        401,
        "an invalid token is rejected with 401, before authorization",
        token="bad-signature",
    ),
    Case(
        "jwt",
        "client/sleep",
        "/public",
        401,
        "an expired token is rejected with 401",
        token="expired",
    ),
    Case("jwt", "client/sleep", "/public", 403, AUDIENCE_403, token="wrong-audience"),
    Case(
        "jwt",
        "client/sleep",
        "/public",
        401,
        "a token from an issuer no rule trusts is rejected with 401",
        token="unknown-issuer",
    ),
    Case("jwt", "client/sleep", "/x", 200, "requestPrincipals: iss/sub exact", token="alice"),
    Case("jwt", "client/sleep", "/x", 403, ALLOW_NONE + " (another subject)", token="bob"),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        200,
        "when claims[groups]: a list claim matches if any element does",
        token="bob-admin-list",
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        200,
        "when claims[groups]: a string claim matches by value",
        token="bob-admin-string",
    ),
    Case(
        "jwt", "client/sleep", "/x", 403, "when claims[groups]: no element matches", token="bob-dev"
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        200,
        "when claims[org][team]: nested claim",
        token="bob-payments",
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        403,
        "when claims[org][team]: nested claim, other value",
        token="bob-billing-team",
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        200,
        "when request.auth.presenter matches azp",
        token="bob-web-app",
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        200,
        "when request.auth.principal '*/carol' and audiences",
        token="carol",
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        200,
        "request.auth.audiences: any element of a list aud",
        token="carol-two-audiences",
    ),
    Case("jwt", "client/sleep", "/secure", 403, "DENY notRequestPrincipals ['*'] requires a token"),
    Case(
        "jwt",
        "client/sleep",
        "/secure",
        200,
        "DENY notRequestPrincipals ['*'] passes with a token",
        token="alice",
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x?access_token=QUERY",
        200,
        "the token may come in the access_token parameter",
        token="alice-query",
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        401,
        "an invalid token fails even where no rule needs one",
        token="bad-signature",
    ),
    # --- when: headers, source.ip, source.principal/namespace, destination.port ------------
    Case(
        "when",
        "client/sleep",
        "/x",
        200,
        "when request.headers[x-tenant]: exact",
        headers=(("x-tenant", "gold"),),
    ),
    Case(
        "when",
        "client/sleep",
        "/x",
        200,
        "when request.headers[...]: 'plat*' is a prefix",
        headers=(("x-tenant", "platinum"),),
    ),
    Case(
        "when",
        "client/sleep",
        "/x",
        403,
        ALLOW_NONE + " (header value)",
        headers=(("x-tenant", "silver"),),
    ),
    Case("when", "client/sleep", "/x", 403, ALLOW_NONE + " (header absent)"),
    Case(
        "when",
        "client/sleep",
        "/x",
        200,
        "when source.ip: the HBONE peer's address",
        headers=(("x-via-ip", "1"),),
    ),
    Case("when", "client/sleep", "/ip", 403, "ipBlocks: 10.0.0.0/8 does not hold 127.0.0.1"),
    Case("when", "ops/deployer", "/x", 200, "when source.principal: prefix match"),
    Case("when", "shop/robot", "/x", 200, "when source.namespace and destination.port 80"),
    Case("when", "client/sleep", "/port80", 200, "to.operation ports: the destination's port"),
    Case(
        "when",
        "client/sleep",
        "/notport",
        403,
        "to.operation notPorts: the destination's port is excluded",
    ),
    Case(
        "when",
        "client/sleep",
        "/x",
        200,
        "when notValues: another value passes",
        headers=(("x-tenant", "silver"), ("x-team", "blue")),
    ),
    Case(
        "when",
        "client/sleep",
        "/y",
        403,
        "when notValues: the excluded value fails",
        headers=(("x-tenant", "bronze"), ("x-team", "blue")),
    ),
    Case(
        "when",
        "client/sleep",
        "/local-deny",
        403,
        "DENY from ipBlocks 127.0.0.0/8 holds the client",
        headers=(("x-tenant", "gold"),),
    ),
    # --- empty spec, empty rules --------------------------------------------------------
    Case(
        "empty-allow",
        "client/sleep",
        "/",
        403,
        "ALLOW with an empty spec ({}) denies every request",
    ),
    Case(
        "empty-allow",
        "ops/deployer",
        "/x",
        403,
        "ALLOW with an empty spec ({}) denies every request",
        token="alice",
    ),
    Case(
        "allow-all",
        "client/sleep",
        "/",
        200,
        "ALLOW rules [{}] allows every request; DENY with no rules denies nothing",
    ),
    Case(
        "allow-all",
        "shop/robot",
        "/x",
        200,
        "ALLOW rules [{}] allows every request",
        method="DELETE",
    ),
    # --- RequestAuthentication alone -----------------------------------------------------
    Case("authn-only", "client/sleep", "/", 200, "RequestAuthentication alone: no token passes"),
    Case(
        "authn-only",
        "client/sleep",
        "/",
        200,
        "RequestAuthentication alone: a valid token passes",
        token="alice",
    ),
    Case(
        "authn-only",
        "client/sleep",
        "/",
        401,
        "RequestAuthentication alone rejects an invalid token",
        token="bad-signature",
    ),
    Case(
        "authn-only",
        "client/sleep",
        "/",
        401,
        "RequestAuthentication alone rejects an expired token",
        token="expired",
    ),
    Case("authn-only", "client/sleep", "/", 403, AUDIENCE_403, token="wrong-audience"),
    Case("authn-only", "shop/robot", "/x", 200, "no AuthorizationPolicy: every source is allowed"),
    # --- dry-run and AUDIT: never enforced ----------------------------------------------
    Case(
        "dry-run",
        "client/sleep",
        "/admin",
        200,
        "istio.io/dry-run: a matching DENY is not enforced",
    ),
    Case(
        "dry-run",
        "client/sleep",
        "/x",
        200,
        "istio.io/dry-run: an ALLOW that matches nothing is not enforced",
    ),
    Case(
        "dry-run",
        "client/sleep",
        "/audit",
        200,
        "AUDIT does not affect whether a request is allowed",
    ),
    # --- Gateway and GatewayClass targets apply to every Service -------------------------
    Case(
        "authn-only", "client/sleep", "/mesh-denied", 403, "GatewayClass target: a mesh-wide DENY"
    ),
    Case(
        "allow-all",
        "client/sleep",
        "/mesh-denied",
        403,
        "mesh-wide DENY beats a Service's ALLOW all",
    ),
    Case(
        "dry-run",
        "client/sleep",
        "/mesh-denied",
        403,
        "mesh-wide DENY applies next to dry-run policies",
    ),
    Case(
        "paths",
        "client/sleep",
        "/api/items",
        403,
        "Gateway target: DENY on every Service",
        headers=(("x-block", "yes"),),
    ),
    Case(
        "authn-only",
        "client/sleep",
        "/",
        403,
        "Gateway target: DENY on every Service",
        headers=(("x-block", "yes"),),
    ),
    Case(
        "authn-only",
        "client/sleep",
        "/",
        200,
        "Gateway DENY: another header value passes",
        headers=(("x-block", "no"),),
    ),
    Case(
        "deny",
        "client/sleep",
        "/",
        403,
        "Gateway DENY and the Service's DENY both apply",
        headers=(("x-block", "yes"),),
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        401,
        "authentication comes before every DENY",
        token="bad-signature",
        headers=(("x-block", "yes"),),
    ),
    Case(
        "jwt",
        "client/sleep",
        "/x",
        403,
        "a valid token does not lift a DENY",
        token="alice",
        headers=(("x-block", "yes"),),
    ),
    Case("empty-allow", "client/sleep", "/mesh-denied", 403, "mesh-wide DENY and an empty ALLOW"),
    Case(
        "when",
        "default/nobody",
        "/x",
        403,
        ALLOW_NONE + " (no rule for default/nobody without headers)",
    ),
    Case(
        "when",
        "client/other",
        "/zzz",
        403,
        "when destination.port 8080: never this destination's port",
    ),
]


@functools.cache
def _token_headers(case: Case) -> tuple[list[tuple[str, str]], str]:
    """The case's headers and path with its token in place (made once per case)."""
    headers = list(case.headers)
    path = case.path
    if case.token == "alice-query":
        path = path.replace("QUERY", _token("alice"))
    elif case.token is not None:
        headers.append(("authorization", "Bearer " + _token(case.token)))
    return headers, path


@dataclasses.dataclass
class World:
    opts: options.BootstrapOptions
    proxy: envoy_process.EnvoyProcess
    ca: dev_ca.CertificateAuthority
    translation: model.Translation
    log: pathlib.Path
    clients: dict[str, hbone_client.SyncHboneClient] = dataclasses.field(default_factory=dict)

    def client(self, identity: str) -> hbone_client.SyncHboneClient:
        if identity not in self.clients:
            namespace, account = identity.split("/")
            ident = self.ca.issue_workload(namespace, account)
            client = hbone_client.SyncHboneClient(
                ("127.0.0.1", self.opts.hbone_port),
                ident.ssl_context(server=False),
                expected_trust_domain=TD,
                timeout=10.0,
            )
            client.connect()
            self.clients[identity] = client
        return self.clients[identity]

    @property
    def waypoint(self) -> model.Waypoint:
        found = self.translation.waypoint("ns1", "waypoint")
        assert found is not None
        return found

    def send(self, case: Case) -> hbone_client.Response:
        vip = POLICY_SETS[case.service][0]
        headers, path = _token_headers(case)
        return self.client(case.identity).request(
            names.authority(vip, 80), case.method, path, headers, host=case.host
        )


@contextlib.contextmanager
def _running(
    tmp: pathlib.Path, objects: Callable[[int, int], list[dict[str, Any]]]
) -> Iterator[World]:
    """A waypoint Envoy for ``objects(http_port, tcp_port)`` in front of one echo backend."""
    ca = dev_ca.CertificateAuthority.create(TD)
    ca.issue_workload("ns1", "waypoint").write(tmp / "certs")
    opts = conftest.loopback_options(
        trust_domain=TD,
        cert_dir=str(tmp / "certs"),
        sds_dir=str(tmp / "sds"),
        hbone_port=conftest.free_port(),
    )
    backend = echo.EchoServer("backend", "ns1", http_ports=(0,), tcp_ports=(0,))
    backend.start_background()
    try:
        translation = translate.translate(objects(backend.http_ports[0], backend.tcp_ports[0]), TD)
        waypoint = translation.waypoint("ns1", "waypoint")
        assert waypoint is not None
        sds.write_files(opts)
        config = tmp / "envoy.yaml"
        config.write_text(bootstrap.to_yaml(bootstrap.build(waypoint, opts)))
        # Access log lines are read back: flush them promptly rather than every 10 s.
        flush = ("--file-flush-interval-msec", "50")
        proxy = envoy_process.start(config, opts.admin_port, tmp / "envoy.log", flush)
        found = World(opts, proxy, ca, translation, tmp / "envoy.log")
        try:
            proxy.wait_ready(30.0)
            yield found
        finally:
            for client in found.clients.values():
                client.close()
            proxy.stop()
    finally:
        backend.stop_background()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with _running(tmp_path_factory.mktemp("istio-authz"), _objects) as found:
        yield found


def _tcp_only(_http_port: int, tcp_port: int) -> list[dict[str, Any]]:
    """The waypoint with the TCP Service's policies alone (no waypoint-wide DENY)."""
    base = _objects(0, tcp_port)[:2]
    return [*base, *_tcp_world(tcp_port)]


@pytest.fixture(scope="module")
def tcp_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with _running(tmp_path_factory.mktemp("istio-authz-tcp"), _tcp_only) as found:
        yield found


def test_every_policy_is_accepted(world: World) -> None:
    kinds = ("AuthorizationPolicy", "RequestAuthentication")
    judged = [s for s in world.translation.statuses if s.ref.kind in kinds]
    assert len(judged) == 5 + sum(len(p) for _vip, p in POLICY_SETS.values())
    for status in judged:
        assert status.ok, status


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)


def test_table(world: World) -> None:
    """All rows against one Envoy; every mismatch is reported with the rule it encodes.

    ``waypoint explain``'s simulator predicts every row from the same config, offline: the
    cross-check that its jwt_authn and RBAC evaluation is Envoy's."""
    resources_built = envoy_resources.build(world.waypoint, world.opts)
    wrong = []
    for case in CASES:
        headers, path = _token_headers(case)
        response = world.send(case)
        if response.status != case.expect:
            wrong.append(f"{case.id}: got {response.status} — {case.rule}")
        predicted = _predict(resources_built, case, headers, path)
        if predicted != response.status:
            wrong.append(f"{case.id}: explain predicts {predicted}, Envoy said {response.status}")
    assert not wrong, "\n".join(wrong)


def _predict(
    built: envoy_resources.Resources, case: Case, headers: list[tuple[str, str]], path: str
) -> int:
    namespace, account = case.identity.split("/")
    request = simulate.Request(
        authority=names.authority(POLICY_SETS[case.service][0], 80),
        method=case.method,
        path=path,
        headers=tuple(headers),
        source_principal=names.spiffe_id(TD, namespace, account),
        host=case.host,
        source_address="127.0.0.1",
    )
    traced = simulate.trace(built, request)
    return traced.status if traced.status is not None else 200


@pytest.mark.parametrize(
    ("identity", "allowed", "rule"),
    [
        ("client/sleep", True, "TCP: an ALLOW rule on L4 attributes applies"),
        ("ops/deployer", False, "TCP: an ALLOW rule with HTTP-only fields is dropped (allow less)"),
        ("client/other", False, "TCP: a DENY rule ignores its HTTP-only fields (deny more)"),
    ],
)
def test_tcp_destination(tcp_world: World, identity: str, allowed: bool, rule: str) -> None:
    assert _tcp_echo(tcp_world, identity) is allowed, rule
    # waypoint explain evaluates the same network RBAC filters offline.
    namespace, account = identity.split("/")
    request = simulate.Request(
        authority=names.authority(DB_VIP, 5432),
        source_principal=names.spiffe_id(TD, namespace, account),
        source_address="127.0.0.1",
    )
    traced = simulate.trace(envoy_resources.build(tcp_world.waypoint, tcp_world.opts), request)
    assert (traced.status is None) is allowed, traced.authz


def test_a_waypoint_wide_deny_with_http_fields_denies_all_tcp(world: World) -> None:
    """Istio: a DENY rule's HTTP-only fields are ignored on TCP, so the Gateway's and the
    mesh-wide DENY (header and path conditions) deny every connection to the TCP Service."""
    assert _tcp_echo(world, "client/sleep") is False
    request = simulate.Request(
        authority=names.authority(DB_VIP, 5432),
        source_principal=names.spiffe_id(TD, "client", "sleep"),
    )
    traced = simulate.trace(envoy_resources.build(world.waypoint, world.opts), request)
    assert traced.status == 403
    assert traced.authz is not None
    assert "mesh-deny" in traced.authz.decided_by or "gateway-deny" in traced.authz.decided_by


def _tcp_echo(world: World, identity: str) -> bool:
    tunnel = world.client(identity).open_tunnel(names.authority(DB_VIP, 5432))
    with tunnel:
        tunnel.send(b"ping")
        try:
            got = tunnel.recv_exactly(len(b"Hostname=backend\nping"))
        except (hbone_errors.HboneError, ConnectionError, OSError):
            return False
    return got.endswith(b"ping")


def test_dry_run_is_counted_not_enforced(world: World) -> None:
    case = Case("dry-run", "client/sleep", "/admin", 200, "dry-run DENY is counted")
    before = _stat(world, "dry_run_deny_.shadow_denied")
    assert world.send(case).status == 200
    assert _stat(world, "dry_run_deny_.shadow_denied") == before + 1


def _stat(world: World, suffix: str) -> int:
    return world.proxy.counter("http.inbound-vip_80_dry-run_ns1_svc_cluster_local.rbac." + suffix)


def test_the_access_log_names_the_deciding_policy_and_rule(world: World) -> None:
    marker = "/private/logged"
    response = world.send(Case("deny", "client/sleep", marker, 403, "DENY path"))
    assert response.status == 403
    assert b"RBAC: access denied" in response.body
    line = _log_line(world, marker)
    assert line["response_code"] == 403
    assert line["rbac"]["deny_enforced_effective_policy_id"] == "ns[ns1]-policy[deny-deny]-rule[1]"
    audited = world.send(Case("dry-run", "client/sleep", "/audit?logged", 200, "AUDIT"))
    assert audited.status == 200
    assert _log_line(world, "/audit?logged")["audit"] is True


def _log_line(world: World, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for found in conftest.json_lines(world.log.read_text()):
            if found.get("path") == path:
                return found
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {path}")

"""Shared test material: keys, token factories, CheckRequests, configs, tiny servers.

Keys are generated once per test session with ``cryptography``; the small HTTP servers
(JWKS, echo backend) are real sockets on loopback, run in threads.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.server
import json
import pathlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jwt as pyjwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from extauthz import config

HERE = pathlib.Path(__file__).resolve().parent
POLICY = HERE / "authz.rego"
DATA = HERE / "data.json"
ISSUER = "https://issuer.test"
AUDIENCE = "orders"
FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
ORDERS = "spiffe://cluster.local/ns/shop/sa/orders"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    public = private_key.public_key()
    algorithm = "ES256" if isinstance(public, ec.EllipticCurvePublicKey) else "RS256"
    jwk: dict[str, Any] = json.loads(
        pyjwt.algorithms.get_default_algorithms()[algorithm].to_jwk(public)
    )
    jwk.update({"kid": kid, "use": "sig"})
    if alg:
        jwk["alg"] = alg
    return jwk


def jwks(*entries: tuple[Any, str]) -> dict[str, Any]:
    return {"keys": [public_jwk(key, kid) for key, kid in entries]}


TRUSTED_JWKS = jwks((RSA_KEY, "rsa-1"), (EC_KEY, "ec-1"))


def claims(now: float | None = None, **overrides: Any) -> dict[str, Any]:
    issued = int(time.time() if now is None else now)
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": issued,
        "exp": issued + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(
    body: Mapping[str, Any] | None = None,
    key: Any = RSA_KEY,
    kid: str | None = "rsa-1",
    alg: str = "RS256",
    headers: Mapping[str, Any] | None = None,
) -> str:
    extra = dict(headers or {})
    if kid is not None:
        extra["kid"] = kid
    return pyjwt.encode(dict(body or claims()), key, algorithm=alg, headers=extra)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: Mapping[str, Any], body: Mapping[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        (b64(json.dumps(header).encode()), b64(json.dumps(body).encode()), b64(signature))
    )


def public_pem(private_key: Any) -> bytes:
    pem: bytes = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def check_request(
    path: str = "/public",
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: str = "",
    source: str = "",
    destination: str = "",
) -> external_auth_pb2.CheckRequest:
    ctx = attribute_context_pb2.AttributeContext
    all_headers = {":method": method, ":path": path, ":authority": "orders.shop", **(headers or {})}
    return external_auth_pb2.CheckRequest(
        attributes=ctx(
            source=ctx.Peer(
                principal=source,
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="10.0.0.1", port_value=40000)
                ),
            ),
            destination=ctx.Peer(principal=destination),
            request=ctx.Request(
                http=ctx.HttpRequest(
                    id="req-1",
                    method=method,
                    path=path,
                    host="orders.shop",
                    scheme="http",
                    protocol="HTTP/1.1",
                    headers=all_headers,
                    body=body,
                )
            ),
        )
    )


def base_config(tmp_path: pathlib.Path, **overrides: Any) -> dict[str, Any]:
    """A config document: provider ``corp`` with inline JWKS, the test policy."""
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "127.0.0.1:0",
        "jwt": {
            "leeway_seconds": 30,
            "providers": [
                {
                    "name": "corp",
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE, "billing"],
                    "algorithms": ["RS256", "ES256"],
                    "jwks": copy.deepcopy(TRUSTED_JWKS),
                    "from_headers": [{"name": "authorization", "prefix": "Bearer "}],
                    "from_params": ["access_token"],
                    "from_cookies": ["session"],
                    "claim_to_headers": [{"claim": "sub", "header": "x-jwt-sub"}],
                    "forward_payload_header": "x-jwt-payload",
                }
            ],
        },
        "policy": {
            "engine": "embedded",
            "modules": [str(POLICY), str(DATA)],
            "decision": "envoy/authz/allow",
        },
        "decision_log": str(tmp_path / "decisions.log"),
        "shutdown_grace_seconds": 5,
    }
    for key, value in overrides.items():
        section, _, sub = key.partition("__")
        if sub:
            doc[section][sub] = value
        else:
            doc[key] = value
    return doc


def settings(tmp_path: pathlib.Path, **overrides: Any) -> config.Settings:
    return config.from_mapping(base_config(tmp_path, **overrides), tmp_path)


def write_config(
    tmp_path: pathlib.Path, doc: Mapping[str, Any], name: str = "config.yaml"
) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict(doc)))
    return path


def decision_lines(tmp_path: pathlib.Path) -> list[dict[str, Any]]:
    path = tmp_path / "decisions.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class JwksServer:
    """A JWKS endpoint whose document and status the test controls; counts fetches."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc: Mapping[str, Any] = doc
        self.status = 200
        self.hits = 0
        self.port = 0
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    @contextlib.contextmanager
    def running(self) -> Iterator[JwksServer]:
        outer = self

        class Handler(_Quiet):
            def do_GET(self) -> None:
                with outer._lock:
                    outer.hits += 1
                body = json.dumps(outer.doc).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        with _serving(Handler) as port:
            self.port = port
            yield self


class EchoHandler(_Quiet):
    """Answer with the request line, headers and body as JSON."""

    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        doc = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _echo


@contextlib.contextmanager
def echo_backend() -> Iterator[int]:
    with _serving(EchoHandler) as port:
        yield port


def base64_payload(segment: str) -> str:
    """Decode a base64url JWT segment (as forwarded in forward_payload_header)."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()

"""Authorization servers for load tests, each its own process so its CPU can be metered.

- extauthz itself (``extauthz serve``) with RS256 JWT and the load-test Rego policy, on the
  embedded engine or on the OPA REST path;
- the OPA Data API test double (``extauthz.testing.opa_server``) for the REST path. Production
  runs the official OPA image as a sidecar; the OPA binary cannot be installed here;
- the floor (:mod:`loadtests.floor_authz`): allow-all in bare Python gRPC.

Tokens are minted with the repo's throwaway demo key (``examples/extauthz``).
"""

from __future__ import annotations

import pathlib
import urllib.request
from collections.abc import Mapping
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz import contract, tokens
from loadtests import procs

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "extauthz"
POLICY = pathlib.Path(__file__).resolve().parent / "policy.rego"
ISSUER = "https://issuer.waypoint.example"
AUDIENCE = "waypoint-demo"
KID = "demo-1"
OPA_NOTE = (
    "OPA REST path measured against extauthz.testing.opa_server (OPA's Data API on the embedded "
    "engine); production runs the official OPA image as a sidecar"
)


def demo_tokens() -> dict[str, str]:
    """The tokens the scenarios use: admin, viewer (valid) and expired (invalid)."""
    key = (EXAMPLE / "demo-signing-key.pem").read_bytes()

    def mint(role: str, ttl: int) -> str:
        return tokens.mint(key, KID, ISSUER, AUDIENCE, "loadgen", ttl, {"role": role})

    return {
        "admin": mint("admin", 7200),
        "viewer": mint("viewer", 7200),
        "expired": mint("admin", -3600),
    }


def bench_config(listen: str) -> dict[str, Any]:
    """The extauthz config of the issue-6 bench: the demo issuer, embedded Rego."""
    return {
        "listen": listen,
        "jwt": {
            "leeway_seconds": 60,
            "providers": [
                {
                    "name": "demo",
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "algorithms": ["RS256"],
                    "jwks_file": str(EXAMPLE / "jwks.json"),
                    "claim_to_headers": [{"claim": "sub", "header": "x-jwt-sub"}],
                }
            ],
        },
        "policy": {"engine": "embedded", "modules": [str(POLICY)], "decision": "envoy/authz/allow"},
    }


def use_opa(doc: contract.ConfigDoc, opa_url: str) -> contract.ConfigDoc:
    """The same config on the OPA REST path (``engine: opa``) at ``opa_url``."""
    policy = doc.get("policy", {}).copy()
    policy.pop("modules", None)
    policy["engine"] = "opa"
    policy["opa"] = {"url": opa_url, "timeout_ms": 200}
    return {**doc, "policy": policy}


def _serving(target: str) -> bool:
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=0.5
            )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start_extauthz(
    name: str, workdir: pathlib.Path, doc: Mapping[str, object], decision_log: bool = True
) -> procs.Child:
    """Run ``extauthz serve`` on config ``doc`` (written under ``workdir/name``) until SERVING.

    The decision log goes to a file beside the config: it stays on, as in production, but
    off the terminal (``decision_log=False`` turns it off, to measure what it costs).
    """
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    doc = {**doc, "decision_log": str(home / "decisions.log") if decision_log else "off"}
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    argv = [procs.PYTHON, "-m", "extauthz.cli", "serve", "--config", str(config)]
    child = procs.spawn(name, [*argv, "--log-level", "WARNING"], home / "extauthz.log", cwd=REPO)
    try:
        child.wait_until(lambda: _serving(str(doc["listen"])))
    except BaseException:
        child.stop()
        raise
    return child


def _opa_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def start_opa_double(workdir: pathlib.Path, port: int) -> procs.Child:
    """Run the OPA Data API test double on the load-test policy."""
    argv = [
        procs.PYTHON,
        "-m",
        "extauthz.testing.opa_server",
        "--listen",
        f"127.0.0.1:{port}",
        str(POLICY),
    ]
    child = procs.spawn("opa-double", argv, workdir / "opa-double.log", cwd=REPO)
    try:
        child.wait_until(lambda: _opa_healthy(port))
    except BaseException:
        child.stop()
        raise
    return child


def start_floor(
    workdir: pathlib.Path, port: int, name: str = "floor", transport: str = "aio"
) -> procs.Child:
    """Run the allow-all floor server; it is ready when its port accepts."""
    argv = [procs.PYTHON, "-m", "loadtests.floor_authz", "--listen", f"127.0.0.1:{port}"]
    argv += ["--transport", transport]
    child = procs.spawn(name, argv, workdir / f"{name}.log", cwd=REPO)
    try:
        child.wait_until(lambda: procs.port_open("127.0.0.1", port))
    except BaseException:
        child.stop()
        raise
    return child

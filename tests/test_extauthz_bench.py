"""Benchmarks of the in-process check path (no gRPC, no Envoy) on the example config.

Disabled by default (``--benchmark-disable`` in addopts runs each once as a test).
Run them with::

    .venv/bin/pytest -q tests/test_extauthz_bench.py --benchmark-enable

End-to-end numbers through Envoy belong to ``loadtests/``.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from extauthz import config, metrics, policy, service, tokens
from extauthz import jwt as jwt_auth
from tests.extauthz import support

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "extauthz"
Check = Callable[[Any], Any]


def run_inline(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (cached keys, embedded engine) without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the check path suspended; it should not on this setup")


@pytest.fixture
def checker() -> service.Checker:
    settings = config.load(EXAMPLE / "config.yaml")
    authn = jwt_auth.Authenticator(settings.jwt)
    authn.load_static()
    engine = policy.make_engine(settings.policy)
    return service.Checker(settings, authn, engine, metrics.Metrics(), service.DecisionLog("off"))


def _demo_token(role: str, ttl: int = 3600) -> str:
    return tokens.mint(
        (EXAMPLE / "demo-signing-key.pem").read_bytes(),
        "demo-1",
        "https://issuer.waypoint.example",
        "waypoint-demo",
        ttl_seconds=ttl,
        claims={"role": role},
    )


def _headers(token: str | None = None) -> dict[str, str]:
    headers = {"user-agent": "hey/0.0.1", "accept": "*/*", "x-request-id": "b3f0c2"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


def test_bench_check_anonymous_allow(benchmark: Any, checker: service.Checker) -> None:
    request = support.check_request("/public/index.html", headers=_headers())
    response = benchmark(lambda: run_inline(checker.check(request)))
    assert response.status.code == 0


def test_bench_check_cached_rs256_admin(benchmark: Any, checker: service.Checker) -> None:
    request = support.check_request("/admin/users", headers=_headers(_demo_token("admin")))
    response = benchmark(lambda: run_inline(checker.check(request)))
    assert response.status.code == 0
    assert response.ok_response.headers[0].header.key == "x-jwt-sub"


def test_bench_check_policy_deny(benchmark: Any, checker: service.Checker) -> None:
    request = support.check_request("/admin/users", headers=_headers(_demo_token("viewer")))
    response = benchmark(lambda: run_inline(checker.check(request)))
    assert response.denied_response.status.code == 403


def test_bench_check_expired_token(benchmark: Any, checker: service.Checker) -> None:
    request = support.check_request("/public", headers=_headers(_demo_token("admin", ttl=-600)))
    response = benchmark(lambda: run_inline(checker.check(request)))
    assert response.denied_response.status.code == 401


def test_bench_uncached_rs256_verify(benchmark: Any, checker: service.Checker) -> None:
    settings = config.load(EXAMPLE / "config.yaml")
    verifier = jwt_auth.ProviderVerifier(
        settings.jwt.providers[0], 60, 16384, time.time, lambda _p, _r: None
    )
    verifier.load_static()
    token = _demo_token("admin")

    async def verify_fresh() -> jwt_auth.Identity:
        # Bypass the cache so this measures RS256 plus our claim checks.
        return await verifier._verify_uncached(token)

    identity = benchmark(lambda: run_inline(verify_fresh()))
    assert identity.claims["role"] == "admin"


def test_run_inline_detects_suspension() -> None:
    async def suspends() -> None:
        await asyncio.sleep(0)

    with pytest.raises(AssertionError, match="suspended"):
        run_inline(suspends())

"""Mint demo tokens and JWKS from a local private key (examples and tests only).

Production tokens come from a real issuer; this exists so examples and ``waypoint up``
can show an allowed, a denied and an unauthenticated request without one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization

_CURVE_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def load_private_key(pem: bytes) -> Any:
    """Load an unencrypted PEM private key (RSA or EC)."""
    return serialization.load_pem_private_key(pem, password=None)


def alg_for(public_key: Any) -> str:
    """The JWS algorithm we use for a public key: RS256 or ES256/384/512."""
    curve = getattr(public_key, "curve", None)
    if curve is None:
        return "RS256"
    return _CURVE_ALGS[curve.name]


def mint(
    private_key_pem: bytes,
    kid: str,
    issuer: str,
    audience: str,
    subject: str = "demo-user",
    ttl_seconds: int = 3600,
    claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """Sign a token with iss, aud, sub, iat, exp and any extra claims."""
    key = load_private_key(private_key_pem)
    issued = int(time.time() if now is None else now)
    body: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "exp": issued + ttl_seconds,
        **(claims or {}),
    }
    return pyjwt.encode(body, key, algorithm=alg_for(key.public_key()), headers={"kid": kid})


def public_jwks(private_key_pem: bytes, kid: str) -> dict[str, Any]:
    """The JWKS (one key) that verifies tokens signed by this private key."""
    public = load_private_key(private_key_pem).public_key()
    alg = alg_for(public)
    jwk = json.loads(pyjwt.algorithms.get_default_algorithms()[alg].to_jwk(public))
    jwk.update({"kid": kid, "use": "sig", "alg": alg})
    return {"keys": [jwk]}

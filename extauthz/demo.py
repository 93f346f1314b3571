"""The demo issuer that ships with the package: a throwaway key, its JWKS, a Rego policy and an
extauthz config, for ``waypoint up`` and ``extauthz token --demo``.

The files live in ``extauthz/examples/`` as package data, so they work from any directory
after a plain ``pip install``. The key is public: never trust this issuer outside demos.
"""

from __future__ import annotations

import pathlib

from extauthz import tokens

FILES = pathlib.Path(__file__).resolve().parent / "examples"
KEY = FILES / "demo-signing-key.pem"
REGO = FILES / "policy.rego"
CONFIG = FILES / "config.yaml"
KID = "demo-1"
ISSUER = "https://issuer.waypoint.example"
AUDIENCE = "waypoint-demo"
SUBJECT = "demo-user"


def mint(role: str = "admin", expired: bool = False, subject: str = SUBJECT) -> str:
    """A token the demo config accepts, with claim ``role`` (or, with ``expired``, one it refuses)."""
    ttl = -3600 if expired else 3600
    return tokens.mint(
        KEY.read_bytes(), KID, ISSUER, AUDIENCE, subject, ttl_seconds=ttl, claims={"role": role}
    )

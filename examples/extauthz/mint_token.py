"""Mint a demo token for the example config (signed with demo-signing-key.pem).

    python examples/extauthz/mint_token.py --role admin      # allowed on /admin
    python examples/extauthz/mint_token.py --role viewer     # 403 on /admin
    python examples/extauthz/mint_token.py --expired         # 401 everywhere

The key is a throwaway demo key checked into the repo: never trust it outside demos.
"""

from __future__ import annotations

import argparse
import pathlib

from extauthz import tokens

HERE = pathlib.Path(__file__).resolve().parent
KEY = HERE / "demo-signing-key.pem"
KID = "demo-1"
ISSUER = "https://issuer.waypoint.example"
AUDIENCE = "waypoint-demo"


def mint(role: str = "admin", subject: str = "demo-user", expired: bool = False) -> str:
    """A token the example config accepts (or, with ``expired``, one it refuses)."""
    ttl = -3600 if expired else 3600
    return tokens.mint(
        KEY.read_bytes(), KID, ISSUER, AUDIENCE, subject, ttl_seconds=ttl, claims={"role": role}
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", default="admin")
    parser.add_argument("--subject", default="demo-user")
    parser.add_argument("--expired", action="store_true")
    args = parser.parse_args()
    print(mint(args.role, args.subject, args.expired))

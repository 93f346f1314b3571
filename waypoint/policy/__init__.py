"""L7 policies attached to waypoints: what the extauthz sidecar needs to know.

The policy objects (``ExtAuthzPolicy`` and ``TrafficPolicy`` of ``policy.waypoint.dev``, Istio's
``RequestAuthentication`` and ``AuthorizationPolicy``) are read by
``waypoint.translate.policyspecs`` and ``waypoint.translate.authorization`` and attached to the
IR by ``waypoint.translate.policies``; ``waypoint.envoy.policies`` renders the result. This
package writes the extauthz sidecar's config (``extauthz_config``) for the controller and
``waypoint up``, in the typed shape of ``extauthz.contract``; whether a waypoint needs the
sidecar at all, the IR says (``model.Waypoint.needs_extauthz``).
"""

from __future__ import annotations

import json

from extauthz import contract
from waypoint import model

# The algorithms a RequestAuthentication's tokens may use: asymmetric only, a JWKS holds
# public keys.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")


def _provider(provider: model.JwtProvider) -> contract.ProviderDoc:
    """One RequestAuthentication jwtRule as an extauthz JWT provider."""
    out: contract.ProviderDoc = {
        "name": provider.name,
        "issuer": provider.issuer,
        "audiences": list(provider.audiences),
        "algorithms": list(ALGORITHMS),
    }
    if provider.jwks_uri is not None:
        out["jwks_uri"] = provider.jwks_uri
    if provider.jwks is not None:
        out["jwks"] = json.loads(provider.jwks)
    if provider.from_headers:
        out["from_headers"] = [{"name": h.name, "prefix": h.prefix} for h in provider.from_headers]
    elif provider.from_params or provider.from_cookies:
        out["from_headers"] = []  # Istio: explicit locations replace the default header
    if provider.from_params:
        out["from_params"] = list(provider.from_params)
    if provider.from_cookies:
        out["from_cookies"] = list(provider.from_cookies)
    if provider.claim_to_headers:
        out["claim_to_headers"] = [
            {"claim": c.claim, "header": c.header} for c in provider.claim_to_headers
        ]
    if provider.payload_header is not None:
        out["forward_payload_header"] = provider.payload_header
    if provider.forward_original_token:
        out["forward_original_token"] = True
    return out


def extauthz_config(
    waypoint: model.Waypoint,
    listen: str = "127.0.0.1:9191",
    modules: tuple[str, ...] = ("/etc/extauthz/policies/policy.rego",),
    metrics_listen: str | None = "127.0.0.1:9464",
) -> contract.ConfigDoc:
    """The extauthz sidecar's config (its YAML format) for this waypoint.

    JWT providers come from the RequestAuthentications that reach the waypoint; the Rego
    ``modules`` are the user's (a ConfigMap the controller mounts). Each route picks its
    decision through context extensions, so the default decision here is only a fallback.
    """
    config: contract.ConfigDoc = {
        "listen": listen,
        # Envoy's jwt_authn verifies tokens before ext_authz and passes the payload along.
        "jwt": {
            "providers": [_provider(p) for p in waypoint.jwt_providers],
            "trust_envoy_metadata": True,
        },
        "policy": {"engine": "embedded", "modules": list(modules)},
    }
    if metrics_listen is not None:
        config["metrics_listen"] = metrics_listen
    return config

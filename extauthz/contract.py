"""The extauthz config file as a typed contract, for its writers and for ``extauthz.config``.

The waypoint generates this file for its extauthz sidecar (``waypoint.policy.extauthz_config``:
the JWT providers of the RequestAuthentications that reach it, the listen addresses and the
Rego modules), and ``extauthz.config`` validates it. Both sides meet here: the writer builds
these TypedDicts, so mypy checks every key and value type it writes, and the validator accepts
exactly the keys they declare, so a key cannot be written on one side and unknown on the other.
Plain data on purpose: a TypedDict *is* the YAML document (``yaml.safe_dump`` writes it as is),
and the validator's own dataclasses (``extauthz.config.Settings``) stay its business.

Each document lists every key extauthz accepts; the waypoint writes a subset (the others are
for hand-written configs: key files, caches, limits). This module imports nothing of the
project: the waypoint reaches extauthz only through it.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, TypedDict

# A JSON value, for the inline JWKS document.
Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"


class _HeaderSourceRequired(TypedDict):
    name: str


class HeaderSourceDoc(_HeaderSourceRequired, total=False):
    """Take a token from header ``name``, after stripping ``prefix`` (default: none)."""

    prefix: str


class ClaimToHeaderDoc(TypedDict):
    """Copy a top-level claim of a valid token into a request header upstream."""

    claim: str
    header: str


class _ProviderRequired(TypedDict):
    name: str
    issuer: str
    audiences: list[str]


class ProviderDoc(_ProviderRequired, total=False):
    """One trusted token issuer (``jwt.providers[]``); ``name``, ``issuer``, ``audiences``
    are required, and exactly one key source (``jwks_file``, ``jwks_uri``, ``jwks``) when an
    asymmetric algorithm is allowed."""

    algorithms: list[str]
    jwks_file: str
    jwks_uri: str
    jwks: dict[str, Json]
    hs_secret_file: str
    # Absent: ``Authorization: Bearer``; an empty list: no header at all.
    from_headers: list[HeaderSourceDoc]
    from_params: list[str]
    from_cookies: list[str]
    claim_to_headers: list[ClaimToHeaderDoc]
    forward_payload_header: str
    forward_original_token: bool
    jwks_cache_seconds: float
    jwks_fetch_timeout_ms: int
    unknown_kid_refetch_seconds: float


class JwtDoc(TypedDict, total=False):
    """End-user authentication (``jwt``)."""

    leeway_seconds: int
    max_token_bytes: int
    providers: list[ProviderDoc]
    # Behind Envoy's jwt_authn: take the payload it verified instead of verifying again.
    trust_envoy_metadata: bool


class OpaDoc(TypedDict, total=False):
    """An OPA server to ask (``policy.opa``)."""

    url: str
    timeout_ms: int


class PolicyDoc(TypedDict, total=False):
    """Which engine evaluates which decision (``policy``)."""

    engine: Literal["embedded", "opa"]
    modules: list[str]
    decision: str
    rego_version: Literal["v0", "v1"]
    opa: OpaDoc
    cache_entries: int
    cache_bytes: int


class ConfigDoc(TypedDict, total=False):
    """The whole file. ``limits`` maps each of ``extauthz.config.Limits``' fields to a number."""

    listen: str
    metrics_listen: str
    jwt: JwtDoc
    policy: PolicyDoc
    dry_run: bool
    decision_log: str
    shutdown_grace_seconds: float
    reuse_port: bool
    transport: Literal["h2", "grpcio"]
    limits: dict[str, float]
    deny_body: Literal["json", "empty"]


def keys(doc: type) -> frozenset[str]:
    """Every key a document of TypedDict ``doc`` may hold."""
    return frozenset(doc.__annotations__)


def required(doc: type) -> tuple[str, ...]:
    """The keys a document of TypedDict ``doc`` must hold, in declaration order."""
    must: frozenset[str] = getattr(doc, "__required_keys__", frozenset())
    return tuple(key for key in doc.__annotations__ if key in must)

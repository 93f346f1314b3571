"""Offline evaluation of a destination's authentication and authorization filters.

Reads the HTTP filters of the destination's HCM as generated (``waypoint.envoy.jwt_authn``
and ``waypoint.envoy.rbac``) and runs them on one request, in their order:

1. ``jwt_authn``: the token in the request (``Authorization: Bearer`` unless the provider
   says otherwise), its issuer, ``exp`` (with the clock skew), ``aud``, and its RS/ES
   signature against an inline JWKS. A remote JWKS cannot be fetched offline: the signature
   is then assumed good and the trace says so. Missing token: passes. 401 / 403 as Envoy.
2. The RBAC filters: CUSTOM (shadow, marks the request for extauthz, whose answer is not
   known offline), AUDIT, DENY, ALLOW; each reports the policies (``ns[..]-policy[..]-
   rule[..]``) that match, enforced and dry-run.

Only the matchers our builders write are modelled; anything else raises UnsupportedConfig.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt as pyjwt
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import metadata_pb2, value_pb2

from waypoint.envoy import jwt_authn, rbac
from waypoint.simulate import matching

Headers = Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Token:
    """What jwt_authn made of the request's token."""

    present: bool
    accepted: bool
    provider: str | None = None
    status: int | None = None  # 401 / 403 when rejected
    reason: str = ""
    claims: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class FilterResult:
    """One RBAC filter: which policies matched, enforced and in dry run."""

    filter: str
    action: str  # ALLOW | DENY | LOG (AUDIT) | CUSTOM
    matched: tuple[str, ...] = ()
    dry_run_matched: tuple[str, ...] = ()
    enforced: bool = True  # False when the filter has only dry-run rules


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome: ``status`` None means the request goes on to its route."""

    token: Token | None
    filters: tuple[FilterResult, ...]
    status: int | None
    decided_by: str = ""  # the policy/rule (or the reason) behind the answer
    ext_authz: bool = False  # a CUSTOM policy sends it to extauthz, which decides


@dataclasses.dataclass(frozen=True)
class Context:
    """What the filters see of one request."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    state: Mapping[str, str]  # filter state: the client's SPIFFE ID and IP
    metadata: Mapping[str, Any]  # dynamic metadata: jwt_authn's payload
    now: float


def evaluate(
    hcm: hcm_pb2.HttpConnectionManager,
    method: str,
    path: str,
    headers: Headers,
    state: Mapping[str, str],
    now: float | None = None,
) -> Verdict | None:
    """The verdict of the HCM's jwt_authn and RBAC filters; None when it has neither."""
    ctx = Context(method, path, tuple(headers), state, {}, time.time() if now is None else now)
    token = None
    results: list[FilterResult] = []
    relevant = False
    for http_filter in hcm.http_filters:
        if http_filter.name == jwt_authn.FILTER:
            relevant = True
            config = jwt_pb2.JwtAuthentication()
            http_filter.typed_config.Unpack(config)
            token = authenticate(config, ctx)
            if token.status is not None:
                return Verdict(token, tuple(results), token.status, token.reason)
            if token.claims is not None:
                ctx = dataclasses.replace(ctx, metadata={jwt_authn.PAYLOAD_KEY: token.claims})
        elif http_filter.name.startswith(rbac.HTTP_RBAC + "."):
            relevant = True
            config_rbac = http_rbac_pb2.RBAC()
            http_filter.typed_config.Unpack(config_rbac)
            result = _rbac(http_filter.name, config_rbac, ctx)
            results.append(result)
            verdict = _decide(result, token, results)
            if verdict is not None:
                return verdict
    if not relevant:
        return None
    custom = any(r.action == "CUSTOM" and r.matched for r in results)
    return Verdict(token, tuple(results), None, ext_authz=custom)


def evaluate_network(
    network_filters: Sequence[listener_components_pb2.Filter], state: Mapping[str, str]
) -> Verdict | None:
    """The verdict of a TCP destination's network RBAC filters; None when it has none."""
    ctx = Context("", "", (), state, {}, 0.0)
    results: list[FilterResult] = []
    for network_filter in network_filters:
        if not network_filter.name.startswith(rbac.NETWORK_RBAC + "."):
            continue
        config = net_rbac_pb2.RBAC()
        network_filter.typed_config.Unpack(config)
        as_http = http_rbac_pb2.RBAC(rules=config.rules) if config.HasField("rules") else None
        if as_http is None:
            as_http = http_rbac_pb2.RBAC()
        if config.HasField("shadow_rules"):
            as_http.shadow_rules.CopyFrom(config.shadow_rules)
        result = _rbac(network_filter.name, as_http, ctx)
        results.append(result)
        verdict = _decide(result, None, results)
        if verdict is not None:
            return verdict
    if not results:
        return None
    return Verdict(None, tuple(results), None)


def _decide(
    result: FilterResult, token: Token | None, results: list[FilterResult]
) -> Verdict | None:
    if not result.enforced:
        return None
    if result.action == "DENY" and result.matched:
        return Verdict(token, tuple(results), 403, f"DENY {result.matched[0]}")
    if result.action == "ALLOW" and not result.matched:
        return Verdict(token, tuple(results), 403, "no ALLOW policy matches")
    return None


# --- jwt_authn ----------------------------------------------------------------------------


def _token_of(provider: jwt_pb2.JwtProvider, ctx: Context) -> str | None:
    headers = provider.from_headers or [
        jwt_pb2.JwtHeader(name="authorization", value_prefix="Bearer ")
    ]
    explicit = bool(provider.from_headers or provider.from_params or provider.from_cookies)
    for header in headers:
        value = matching.header_value(ctx.headers, header.name)
        if value is not None and value.startswith(header.value_prefix):
            return value[len(header.value_prefix) :].strip()
    params = list(provider.from_params) or ([] if explicit else ["access_token"])
    for param in params:
        found = matching.query_first(ctx.path, param)
        if found:
            return found
    return None


def authenticate(config: jwt_pb2.JwtAuthentication, ctx: Context) -> Token:
    """requires_any(every provider, allow_missing): the first provider that verifies wins."""
    reasons = []
    present = False
    for name in sorted(config.providers):
        provider = config.providers[name]
        raw = _token_of(provider, ctx)
        if raw is None:
            continue
        present = True
        status, reason, claims = _verify(provider, raw, ctx.now)
        if status is None:
            return Token(True, True, name, reason=reason, claims=claims)
        reasons.append((status, f"{name}: {reason}"))
    if not present:
        return Token(False, True, reason="no token: allowed to pass (allow_missing)")
    # Envoy answers with the first failing requirement's status; 401 unless only aud failed.
    status = 403 if reasons and all(s == 403 for s, _ in reasons) else 401
    return Token(True, False, status=status, reason="; ".join(r for _, r in reasons))


def _segment(text: str) -> Any:
    padded = text + "=" * (-len(text) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def _verify(
    provider: jwt_pb2.JwtProvider, raw: str, now: float
) -> tuple[int | None, str, Mapping[str, Any] | None]:
    parts = raw.split(".")
    try:
        header, claims = _segment(parts[0]), _segment(parts[1])
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return 401, "the token is malformed", None
    if not isinstance(claims, dict) or not isinstance(header, dict):
        return 401, "the token is malformed", None
    if claims.get("iss") != provider.issuer:
        return 401, f"issuer {claims.get('iss')!r} is not {provider.issuer!r}", None
    exp = claims.get("exp")
    if exp is None and provider.require_expiration:
        return 401, "the token has no exp", None
    if isinstance(exp, int | float) and exp + provider.clock_skew_seconds < now:
        return 401, "the token has expired", None
    signature = _signature(provider, raw, header)
    if signature:
        return 401, signature, None
    audiences = claims.get("aud")
    listed = audiences if isinstance(audiences, list) else [audiences]
    if provider.audiences and not set(listed) & set(provider.audiences):
        return 403, f"audience {audiences!r} is not one of {list(provider.audiences)}", None
    checked = "signature not checked (remote JWKS)" if provider.HasField("remote_jwks") else ""
    return None, checked or "verified", claims


def _signature(provider: jwt_pb2.JwtProvider, raw: str, header: Mapping[str, Any]) -> str:
    """Why the signature fails against the inline JWKS ("" when it verifies or cannot be
    checked offline)."""
    if not provider.HasField("local_jwks"):
        return ""
    try:
        keys = pyjwt.PyJWKSet.from_json(provider.local_jwks.inline_string).keys
    except (pyjwt.PyJWTError, ValueError):
        return "the JWKS has no usable key"
    kid = header.get("kid")
    for key in keys:
        if kid is not None and key.key_id not in (None, kid):
            continue
        try:
            pyjwt.decode(
                raw,
                key.key,
                algorithms=[str(header.get("alg"))],
                options={"verify_aud": False, "verify_exp": False, "verify_iat": False},
            )
        except pyjwt.PyJWTError:
            continue
        return ""
    return "the signature does not verify with the provider's keys"


# --- RBAC ---------------------------------------------------------------------------------

_ACTION_NAMES = {rbac_pb2.RBAC.ALLOW: "ALLOW", rbac_pb2.RBAC.DENY: "DENY", rbac_pb2.RBAC.LOG: "LOG"}


def _rbac(name: str, config: http_rbac_pb2.RBAC, ctx: Context) -> FilterResult:
    custom = name == rbac.HTTP_RBAC + ".custom"
    shadow = config.shadow_rules if config.HasField("shadow_rules") else None
    dry = _matching(shadow, ctx) if shadow is not None and not custom else ()
    if config.HasField("rules"):
        action = _ACTION_NAMES[config.rules.action]
        return FilterResult(name, action, _matching(config.rules, ctx), dry)
    if custom and shadow is not None:
        return FilterResult(name, "CUSTOM", _matching(shadow, ctx), enforced=False)
    action = _ACTION_NAMES[shadow.action] if shadow is not None else "ALLOW"
    return FilterResult(name, action, (), dry, enforced=False)


def _matching(rules: rbac_pb2.RBAC, ctx: Context) -> tuple[str, ...]:
    return tuple(name for name in sorted(rules.policies) if _policy(rules.policies[name], ctx))


def _policy(policy: rbac_pb2.Policy, ctx: Context) -> bool:
    return any(_permission(p, ctx) for p in policy.permissions) and any(
        _principal(p, ctx) for p in policy.principals
    )


def _permission(rule: rbac_pb2.Permission, ctx: Context) -> bool:
    kind = rule.WhichOneof("rule")
    if kind == "any":
        return bool(rule.any)
    if kind == "and_rules":
        return all(_permission(r, ctx) for r in rule.and_rules.rules)
    if kind == "or_rules":
        return any(_permission(r, ctx) for r in rule.or_rules.rules)
    if kind == "not_rule":
        return not _permission(rule.not_rule, ctx)
    if kind == "header":
        return _header(rule.header, ctx)
    if kind == "url_path":
        return matching.string_matches(rule.url_path.path, matching.strip_query(ctx.path))
    if kind == "uri_template":
        config = uri_template_match_pb2.UriTemplateMatchConfig()
        rule.uri_template.typed_config.Unpack(config)
        return _template(config.path_template, matching.strip_query(ctx.path))
    raise matching.UnsupportedConfig(f"RBAC permission {kind!r} is not supported")


def _principal(rule: rbac_pb2.Principal, ctx: Context) -> bool:
    kind = rule.WhichOneof("identifier")
    if kind == "any":
        return bool(rule.any)
    if kind == "and_ids":
        return all(_principal(p, ctx) for p in rule.and_ids.ids)
    if kind == "or_ids":
        return any(_principal(p, ctx) for p in rule.or_ids.ids)
    if kind == "not_id":
        return not _principal(rule.not_id, ctx)
    if kind == "header":
        return _header(rule.header, ctx)
    if kind == "filter_state":
        return _filter_state(rule.filter_state, ctx)
    if kind == "sourced_metadata":
        return _metadata(rule.sourced_metadata.metadata_matcher, ctx)
    raise matching.UnsupportedConfig(f"RBAC principal {kind!r} is not supported")


def _header(matcher: Any, ctx: Context) -> bool:
    headers = (
        (":method", ctx.method),
        (":path", ctx.path),
        *ctx.headers,
    )
    return matching.header_matcher(matcher, headers) is None


def _filter_state(matcher: Any, ctx: Context) -> bool:
    value = ctx.state.get(matcher.key)
    if value is None:
        return False
    if matcher.WhichOneof("matcher") == "address_match":
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return any(
            address in ipaddress.ip_network(f"{r.address_prefix}/{r.prefix_len.value}", False)
            for r in matcher.address_match.ranges
        )
    return matching.string_matches(matcher.string_match, value)


def _metadata(matcher: metadata_pb2.MetadataMatcher, ctx: Context) -> bool:
    if matcher.filter != jwt_authn.FILTER:
        raise matching.UnsupportedConfig(f"metadata of {matcher.filter} is not modelled")
    value: Any = ctx.metadata
    for segment in matcher.path:
        if not isinstance(value, Mapping) or segment.key not in value:
            return False
        value = value[segment.key]
    return _value(matcher.value, value)


def _value(matcher: value_pb2.ValueMatcher, value: Any) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "string_match":
        return isinstance(value, str) and matching.string_matches(matcher.string_match, value)
    if kind == "or_match":
        return any(_value(m, value) for m in matcher.or_match.value_matchers)
    if kind == "list_match":
        return isinstance(value, list) and any(_value(matcher.list_match.one_of, v) for v in value)
    raise matching.UnsupportedConfig(f"metadata value matcher {kind!r} is not supported")


def _template(template: str, path: str) -> bool:
    """Envoy's uri_template as a regex: ``*`` is one non-empty segment, ``**`` any text,
    slashes included, possibly empty (so ``/files/**`` takes ``/files/`` but not
    ``/files``); checked against Envoy by the behavioural table."""
    parts = []
    for segment in template.split("/"):
        if segment == "**":
            parts.append(".*")
        elif segment == "*":
            parts.append("[^/]+")
        else:
            parts.append(re.escape(segment))
    return re.fullmatch("/".join(parts), path) is not None


def describe(verdict: Verdict) -> list[str]:
    """Text lines for ``waypoint explain``."""
    lines = []
    token = verdict.token
    if token is not None:
        if not token.present:
            lines.append("jwt_authn: no token (passes; requestPrincipals decide)")
        elif token.accepted:
            lines.append(f"jwt_authn: token accepted by provider {token.provider} ({token.reason})")
        else:
            lines.append(f"jwt_authn: token rejected with {token.status}: {token.reason}")
    for result in verdict.filters:
        label = {"LOG": "AUDIT"}.get(result.action, result.action)
        matched = ", ".join(result.matched) or "no policy"
        mode = "" if result.enforced else " (dry run)"
        if result.action == "CUSTOM":
            lines.append(
                f"rbac {label}: {matched} matches"
                + (" -> extauthz decides" if result.matched else "")
            )
            continue
        if result.enforced:
            lines.append(f"rbac {label}: {matched} matches")
        if result.dry_run_matched or not result.enforced:
            shadow = ", ".join(result.dry_run_matched) or "no policy"
            lines.append(f"rbac {label}{mode or ' (dry run)'}: {shadow} matches, not enforced")
    if verdict.status is not None:
        lines.append(f"authorization: {verdict.status} ({verdict.decided_by})")
    elif verdict.ext_authz:
        lines.append("authorization: passed to extauthz (CUSTOM); its answer is not known offline")
    else:
        lines.append("authorization: allowed")
    return lines

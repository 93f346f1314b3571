"""Policy objects (plain dicts from YAML) → validated specs, or ``fields.Bad`` naming the field.

Three kinds are read: ``ExtAuthzPolicy`` and ``TrafficPolicy`` (``policy.waypoint.dev``) and
Istio's ``RequestAuthentication`` (``security.istio.io``). Validation matches the CRD schemas
in ``manifests/base/crds`` so a policy that passes the API server also passes here, and one
that was written around the API server (or read from a file) still gets a clear reason.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from waypoint import model, wellknown
from waypoint.translate import authorization, fields, filters, index

EXT_AUTHZ = "ExtAuthzPolicy"
TRAFFIC = "TrafficPolicy"
REQUEST_AUTHN = "RequestAuthentication"
AUTHZ_POLICY = "AuthorizationPolicy"
KINDS = {
    (wellknown.POLICY_API_GROUP, EXT_AUTHZ),
    (wellknown.POLICY_API_GROUP, TRAFFIC),
    (wellknown.ISTIO_SECURITY_API_GROUP, REQUEST_AUTHN),
    (wellknown.ISTIO_SECURITY_API_GROUP, AUTHZ_POLICY),
}

GATEWAY_KIND = (wellknown.GATEWAY_API_GROUP, "Gateway")
SERVICE_KIND = (wellknown.CORE_GROUP, "Service")
HTTP_ROUTE_KIND = (wellknown.GATEWAY_API_GROUP, "HTTPRoute")
GRPC_ROUTE_KIND = (wellknown.GATEWAY_API_GROUP, "GRPCRoute")
ROUTE_KINDS = (HTTP_ROUTE_KIND, GRPC_ROUTE_KIND)
ALL_TARGETS = (GATEWAY_KIND, SERVICE_KIND, *ROUTE_KINDS)
AUTHN_TARGETS = (GATEWAY_KIND, SERVICE_KIND)
GATEWAY_CLASS_KIND = (wellknown.GATEWAY_API_GROUP, "GatewayClass")
AUTHZ_TARGETS = (GATEWAY_KIND, SERVICE_KIND, GATEWAY_CLASS_KIND)

_DECISION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "envoy-ratelimited",
)
_LB_TYPES = {t.value: t for t in model.LoadBalancerType}


@dataclasses.dataclass(frozen=True)
class Target:
    """One ``targetRefs`` entry, in the policy's own namespace."""

    group: str
    kind: str
    name: str
    section: str | None = None

    def ref(self, namespace: str) -> model.ObjectRef:
        return model.ObjectRef(self.group, self.kind, namespace, self.name)


@dataclasses.dataclass(frozen=True)
class MirrorRef:
    """A TrafficPolicy mirror's backend: a Service port in the policy's namespace."""

    name: str
    port: int
    percent: float = 100.0


@dataclasses.dataclass(frozen=True)
class Traffic:
    """A TrafficPolicy split into the part for routes and the part for clusters."""

    rate_limit: model.LocalRateLimit | None = None
    fault: model.FaultInjection | None = None
    timeouts: model.Timeouts | None = None
    retry: model.Retry | None = None
    mirror: MirrorRef | None = None
    cluster: model.ClusterPolicy | None = None

    @property
    def has_route_part(self) -> bool:
        parts = (self.rate_limit, self.fault, self.timeouts, self.retry, self.mirror)
        return any(p is not None for p in parts)


Body = model.ExtAuthz | Traffic | tuple[model.JwtProvider, ...] | model.AuthorizationPolicy


@dataclasses.dataclass(frozen=True)
class Policy:
    """A validated policy object. ``body`` is ExtAuthz, Traffic, a tuple of JwtProviders
    or an AuthorizationPolicy."""

    ref: model.ObjectRef
    created: datetime.datetime | None
    targets: tuple[Target, ...]
    body: Body

    @property
    def source(self) -> str:
        return f"{self.ref.kind}/{self.ref.namespace}/{self.ref.name}"

    def order(self) -> tuple[datetime.datetime, str, str]:
        """Gateway API conflict order: oldest first, then namespace/name."""
        oldest = datetime.datetime.min.replace(tzinfo=datetime.UTC)
        return (self.created or oldest, self.ref.namespace, self.ref.name)


def is_policy(raw: Any) -> bool:
    if not fields.is_mapping(raw):
        return False
    kind = raw.get("kind")
    return isinstance(kind, str) and (index.group_of(raw.get("apiVersion")), kind) in KINDS


def read(obj: index.Obj) -> Policy:
    """Validate one policy object; raises ``fields.Bad`` naming the offending field."""
    spec = fields.mapping(obj.raw.get("spec"), "spec", required=True)
    if obj.kind == EXT_AUTHZ:
        targets = _targets(spec, ALL_TARGETS)
        body: Body = ext_authz(obj, spec)
    elif obj.kind == TRAFFIC:
        targets = _targets(spec, ALL_TARGETS)
        body = traffic(spec)
    elif obj.kind == AUTHZ_POLICY:
        targets = _targets(spec, AUTHZ_TARGETS)
        meta = fields.mapping(obj.raw.get("metadata"), "metadata")
        annotations = fields.mapping(meta.get("annotations"), "metadata.annotations")
        body = authorization.read(obj.namespace, obj.name, annotations, spec)
        _authz_targets(obj.namespace, targets)
    else:
        targets = _targets(spec, AUTHN_TARGETS)
        body = jwt_rules(obj, spec)
    return Policy(ref=obj.ref, created=obj.created, targets=targets, body=body)


# --- targetRefs -----------------------------------------------------------------------------


def _targets(spec: Mapping[str, Any], allowed: tuple[tuple[str, str], ...]) -> tuple[Target, ...]:
    raw = spec.get("targetRefs")
    if raw is None and spec.get("targetRef") is not None:
        raw = [spec["targetRef"]]  # Istio's older singular form
    if raw is None and spec.get("selector") is None:
        # Istio applies such a policy to the namespace's sidecars and ztunnel, never to
        # a waypoint; say so rather than accept a policy that would enforce nothing here.
        raise fields.Bad(
            "spec.targetRefs is required: a waypoint enforces only policies that "
            "name it, a Service it serves or its GatewayClass"
        )
    items = fields.seq(raw, "spec.targetRefs", required=True)
    if not items:
        raise fields.Bad("spec.targetRefs must name at least one target")
    found = []
    for i, item_raw in enumerate(items):
        path = f"spec.targetRefs[{i}]"
        item = fields.mapping(item_raw, path, required=True)
        group = fields.string(item.get("group", ""), f"{path}.group")
        kind = fields.nonempty(item.get("kind"), f"{path}.kind")
        if (group, kind) not in allowed:
            kinds = ", ".join(f"{k} ({g or 'core'})" for g, k in allowed)
            raise fields.Bad(f"{path}: kind {kind!r} of group {group!r} is not one of {kinds}")
        if item.get("namespace") is not None:
            raise fields.Bad(f"{path}.namespace: targets must be in the policy's namespace")
        found.append(
            Target(
                group=group,
                kind=kind,
                name=fields.nonempty(item.get("name"), f"{path}.name"),
                section=_opt_nonempty(item.get("sectionName"), f"{path}.sectionName"),
            )
        )
    if len(set(found)) != len(found):
        raise fields.Bad("spec.targetRefs names the same target twice")
    return tuple(found)


def _authz_targets(namespace: str, targets: tuple[Target, ...]) -> None:
    for i, target in enumerate(targets):
        path = f"spec.targetRefs[{i}]"
        if target.section is not None:
            raise fields.Bad(f"{path}.sectionName is not part of AuthorizationPolicy targetRefs")
        is_class = (target.group, target.kind) == GATEWAY_CLASS_KIND
        if is_class and namespace != authorization.ROOT_NAMESPACE:
            raise fields.Bad(
                f"{path}: a GatewayClass (mesh-wide) policy must be in the root namespace "
                f"{authorization.ROOT_NAMESPACE}, not {namespace}"
            )


def _opt_nonempty(value: Any, path: str) -> str | None:
    return None if value is None else fields.nonempty(value, path)


def _known(item: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    for key in item:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise fields.Bad(
                f"{where} is not a known field (expected {', '.join(sorted(allowed))})"
            )


def _choice(value: Any, path: str, options: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in options:
        raise fields.Bad(f"{path} must be one of {', '.join(options)}, not {value!r}")
    return str(value)


def _percent(value: Any, path: str) -> float:
    if value is None:
        return 100.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise fields.Bad(f"{path} must be a number from 0 to 100, not {value!r}")
    return float(value)


def _positive_duration(value: Any, path: str) -> float:
    seconds = filters.duration(value, path)
    if seconds <= 0:
        raise fields.Bad(f"{path} must be longer than 0")
    return seconds


# --- ExtAuthzPolicy -------------------------------------------------------------------------


def ext_authz(obj: index.Obj, spec: Mapping[str, Any]) -> model.ExtAuthz:
    _known(
        spec,
        "spec",
        {"targetRefs", "decision", "failureMode", "timeout", "withRequestBody", "jwt"},
    )
    decision = fields.nonempty(spec.get("decision"), "spec.decision").strip("/")
    if not _DECISION.match(decision):
        raise fields.Bad(f"spec.decision {decision!r} must be a Rego path like envoy/authz/allow")
    body = fields.mapping(spec.get("withRequestBody"), "spec.withRequestBody")
    _known(body, "spec.withRequestBody", {"maxBytes", "allowPartialMessage"})
    max_bytes = 0
    if spec.get("withRequestBody") is not None:
        max_bytes = fields.integer(
            body.get("maxBytes", 8192), "spec.withRequestBody.maxBytes", 1, 10 * 1024 * 1024
        )
    partial = body.get("allowPartialMessage", False)
    if not isinstance(partial, bool):
        raise fields.Bad("spec.withRequestBody.allowPartialMessage must be true or false")
    jwt = fields.mapping(spec.get("jwt"), "spec.jwt")
    _known(jwt, "spec.jwt", {"requirement"})
    requirement = _choice(
        jwt.get("requirement"), "spec.jwt.requirement", ("Required", "Optional"), "Optional"
    )
    mode = _choice(spec.get("failureMode"), "spec.failureMode", ("Closed", "Open"), "Closed")
    timeout = 0.2
    if spec.get("timeout") is not None:
        timeout = _positive_duration(spec["timeout"], "spec.timeout")
    return model.ExtAuthz(
        policy=f"{obj.namespace}/{obj.name}",
        decision=decision,
        failure_mode=model.FailureMode(mode),
        timeout=timeout,
        max_request_bytes=max_bytes,
        allow_partial_message=partial,
        jwt_required=requirement == "Required",
    )


# --- TrafficPolicy --------------------------------------------------------------------------

_TRAFFIC_KEYS = {
    "targetRefs",
    "loadBalancer",
    "circuitBreaker",
    "outlierDetection",
    "rateLimit",
    "timeout",
    "retry",
    "faultInjection",
    "mirror",
}


def traffic(spec: Mapping[str, Any]) -> Traffic:
    _known(spec, "spec", _TRAFFIC_KEYS)
    cluster = model.ClusterPolicy(
        load_balancer=_load_balancer(spec.get("loadBalancer"), "spec.loadBalancer"),
        circuit_breaker=_circuit_breaker(spec.get("circuitBreaker"), "spec.circuitBreaker"),
        outlier_detection=_outlier(spec.get("outlierDetection"), "spec.outlierDetection"),
    )
    out = Traffic(
        rate_limit=_rate_limit(spec.get("rateLimit"), "spec.rateLimit"),
        fault=_fault(spec.get("faultInjection"), "spec.faultInjection"),
        timeouts=_timeout(spec.get("timeout"), "spec.timeout"),
        retry=_retry(spec.get("retry"), "spec.retry"),
        mirror=_mirror(spec.get("mirror"), "spec.mirror"),
        cluster=None if cluster == model.ClusterPolicy() else cluster,
    )
    if out == Traffic():
        raise fields.Bad("spec sets no traffic policy field")
    return out


def _load_balancer(raw: Any, path: str) -> model.LoadBalancer | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    _known(item, path, {"type", "consistentHash"})
    kind = _LB_TYPES[_choice(item.get("type"), f"{path}.type", tuple(_LB_TYPES), "RoundRobin")]
    hashing = item.get("consistentHash")
    if kind is not model.LoadBalancerType.CONSISTENT_HASH:
        if hashing is not None:
            raise fields.Bad(f"{path}.consistentHash is only for type ConsistentHash")
        return model.LoadBalancer(type=kind)
    hash_item = fields.mapping(hashing, f"{path}.consistentHash", required=True)
    _known(hash_item, f"{path}.consistentHash", {"header", "cookie"})
    if (hash_item.get("header") is None) == (hash_item.get("cookie") is None):
        raise fields.Bad(f"{path}.consistentHash needs exactly one of header and cookie")
    if hash_item.get("header") is not None:
        return model.LoadBalancer(
            type=kind, hash_header=_header(hash_item["header"], f"{path}.consistentHash.header")
        )
    cookie = fields.mapping(hash_item["cookie"], f"{path}.consistentHash.cookie")
    _known(cookie, f"{path}.consistentHash.cookie", {"name", "ttl"})
    ttl = cookie.get("ttl")
    return model.LoadBalancer(
        type=kind,
        hash_cookie=fields.nonempty(cookie.get("name"), f"{path}.consistentHash.cookie.name"),
        cookie_ttl=None
        if ttl is None
        else filters.duration(ttl, f"{path}.consistentHash.cookie.ttl"),
    )


def _header(value: Any, path: str) -> str:
    name = fields.nonempty(value, path)
    if not _HEADER.match(name):
        raise fields.Bad(f"{path} {name!r} is not a valid header name")
    return name.lower()


def _counts(raw: Any, path: str, keys: tuple[str, ...]) -> dict[str, int | None]:
    item = fields.mapping(raw, path)
    _known(item, path, set(keys))
    return {k: fields.opt_integer(item.get(k), f"{path}.{k}", 1, 2**31 - 1) for k in keys}


def _circuit_breaker(raw: Any, path: str) -> model.CircuitBreaker | None:
    if raw is None:
        return None
    keys = ("maxConnections", "maxPendingRequests", "maxParallelRequests", "maxParallelRetries")
    got = _counts(raw, path, keys)
    return model.CircuitBreaker(*(got[k] for k in keys))


def _outlier(raw: Any, path: str) -> model.OutlierDetection | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    _known(
        item,
        path,
        {"consecutive5xxErrors", "interval", "baseEjectionTime", "maxEjectionPercent"},
    )

    def dur(key: str) -> float | None:
        value = item.get(key)
        return None if value is None else _positive_duration(value, f"{path}.{key}")

    return model.OutlierDetection(
        consecutive_5xx=fields.opt_integer(
            item.get("consecutive5xxErrors"), f"{path}.consecutive5xxErrors", 1, 2**31 - 1
        ),
        interval=dur("interval"),
        base_ejection_time=dur("baseEjectionTime"),
        max_ejection_percent=fields.opt_integer(
            item.get("maxEjectionPercent"), f"{path}.maxEjectionPercent", 0, 100
        ),
    )


def _rate_limit(raw: Any, path: str) -> model.LocalRateLimit | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    _known(item, path, {"local"})
    local = fields.mapping(item.get("local"), f"{path}.local", required=True)
    _known(local, f"{path}.local", {"tokens", "fillInterval"})
    return model.LocalRateLimit(
        tokens=fields.integer(local.get("tokens"), f"{path}.local.tokens", 1, 2**31 - 1),
        fill_interval=_positive_duration(local.get("fillInterval"), f"{path}.local.fillInterval"),
    )


def _fault(raw: Any, path: str) -> model.FaultInjection | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    _known(item, path, {"delay", "abort"})
    if item.get("delay") is None and item.get("abort") is None:
        raise fields.Bad(f"{path} needs delay or abort")
    out = model.FaultInjection()
    if item.get("delay") is not None:
        delay = fields.mapping(item["delay"], f"{path}.delay")
        _known(delay, f"{path}.delay", {"fixedDelay", "percentage"})
        out = dataclasses.replace(
            out,
            delay=_positive_duration(delay.get("fixedDelay"), f"{path}.delay.fixedDelay"),
            delay_percent=_percent(delay.get("percentage"), f"{path}.delay.percentage"),
        )
    if item.get("abort") is not None:
        abort = fields.mapping(item["abort"], f"{path}.abort")
        _known(abort, f"{path}.abort", {"httpStatus", "percentage"})
        out = dataclasses.replace(
            out,
            abort_status=fields.integer(
                abort.get("httpStatus"), f"{path}.abort.httpStatus", 200, 599
            ),
            abort_percent=_percent(abort.get("percentage"), f"{path}.abort.percentage"),
        )
    return out


def _timeout(raw: Any, path: str) -> model.Timeouts | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    _known(item, path, {"request"})
    return model.Timeouts(request=filters.duration(item.get("request"), f"{path}.request"))


def _retry(raw: Any, path: str) -> model.Retry | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    _known(item, path, {"attempts", "retryOn", "codes", "perTryTimeout", "backoff"})
    retry_on = tuple(
        _choice(v, f"{path}.retryOn[{i}]", RETRY_ON, "")
        for i, v in enumerate(fields.seq(item.get("retryOn"), f"{path}.retryOn"))
    )
    codes = tuple(
        fields.integer(c, f"{path}.codes[{i}]", 400, 599)
        for i, c in enumerate(fields.seq(item.get("codes"), f"{path}.codes"))
    )
    if codes and "retriable-status-codes" not in retry_on:
        retry_on += ("retriable-status-codes",)
    backoff, per_try = item.get("backoff"), item.get("perTryTimeout")
    return model.Retry(
        attempts=fields.integer(item.get("attempts", 1), f"{path}.attempts", 0, 100),
        codes=tuple(sorted(set(codes))),
        backoff_seconds=None if backoff is None else _positive_duration(backoff, f"{path}.backoff"),
        retry_on=tuple(dict.fromkeys(retry_on)) or ("connect-failure", "refused-stream", "reset"),
        per_try_timeout=None
        if per_try is None
        else _positive_duration(per_try, f"{path}.perTryTimeout"),
    )


def _mirror(raw: Any, path: str) -> MirrorRef | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    _known(item, path, {"backendRef", "percentage"})
    ref = fields.mapping(item.get("backendRef"), f"{path}.backendRef", required=True)
    _known(ref, f"{path}.backendRef", {"name", "namespace", "port", "group", "kind"})
    if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
        raise fields.Bad(f"{path}.backendRef must be a Service")
    if ref.get("namespace") is not None:
        raise fields.Bad(
            f"{path}.backendRef.namespace: the mirror must be in the policy's namespace"
        )
    return MirrorRef(
        name=fields.nonempty(ref.get("name"), f"{path}.backendRef.name"),
        port=fields.port(ref.get("port"), f"{path}.backendRef.port"),
        percent=_percent(item.get("percentage"), f"{path}.percentage"),
    )


# --- RequestAuthentication ------------------------------------------------------------------

_RULE_KEYS = {
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputClaimToHeaders",
    "outputPayloadToHeader",
    "forwardOriginalToken",
    "timeout",
}


def jwt_rules(obj: index.Obj, spec: Mapping[str, Any]) -> tuple[model.JwtProvider, ...]:
    _known(spec, "spec", {"targetRefs", "targetRef", "jwtRules", "selector"})
    if spec.get("selector") is not None:
        raise fields.Bad("spec.selector: waypoints take RequestAuthentication by targetRefs only")
    rules = fields.seq(spec.get("jwtRules"), "spec.jwtRules", required=True)
    if not rules:
        raise fields.Bad("spec.jwtRules must list at least one rule")
    return tuple(_jwt_rule(obj, raw, i, f"spec.jwtRules[{i}]") for i, raw in enumerate(rules))


def _jwt_rule(obj: index.Obj, raw: Any, position: int, path: str) -> model.JwtProvider:
    item = fields.mapping(raw, path, required=True)
    _known(item, path, _RULE_KEYS)
    jwks_uri = fields.opt_string(item.get("jwksUri"), f"{path}.jwksUri")
    if jwks_uri is not None:
        # Envoy fetches it through a cluster made from its host and port.
        url = urllib.parse.urlsplit(jwks_uri)
        try:
            url_ok = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
        except ValueError:
            url_ok = False
        if not url_ok:
            raise fields.Bad(f"{path}.jwksUri {jwks_uri!r} must be an http or https URL")
    jwks = fields.opt_string(item.get("jwks"), f"{path}.jwks")
    if jwks is not None:
        try:
            keys = json.loads(jwks).get("keys")
        except (ValueError, AttributeError):
            keys = None
        if not isinstance(keys, list):
            raise fields.Bad(f"{path}.jwks must be a JSON Web Key Set with a keys list")
        if not any(_usable_jwk(key) for key in keys):
            # Envoy refuses a whole config whose inline JWKS has no public key it can use.
            raise fields.Bad(f"{path}.jwks has no usable key (RSA, EC, OKP or oct)")
    if (jwks_uri is None) == (jwks is None):
        raise fields.Bad(f"{path} needs exactly one of jwksUri and jwks")
    if not fields.seq(item.get("audiences"), f"{path}.audiences"):
        # Istio skips the aud check without audiences; extauthz always checks it, so
        # accepting the rule would turn every valid token into a 401.
        raise fields.Bad(f"{path}.audiences must list at least one audience")
    return model.JwtProvider(
        name=f"{obj.namespace}.{obj.name}.{position}",
        issuer=fields.nonempty(item.get("issuer"), f"{path}.issuer"),
        audiences=tuple(
            fields.nonempty(a, f"{path}.audiences[{i}]")
            for i, a in enumerate(fields.seq(item.get("audiences"), f"{path}.audiences"))
        ),
        jwks_uri=jwks_uri,
        jwks=jwks,
        from_headers=_token_headers(item.get("fromHeaders"), f"{path}.fromHeaders"),
        from_params=_strings(item.get("fromParams"), f"{path}.fromParams"),
        from_cookies=_strings(item.get("fromCookies"), f"{path}.fromCookies"),
        claim_to_headers=_claim_headers(
            item.get("outputClaimToHeaders"), f"{path}.outputClaimToHeaders"
        ),
        payload_header=None
        if item.get("outputPayloadToHeader") is None
        else _header(item["outputPayloadToHeader"], f"{path}.outputPayloadToHeader"),
        forward_original_token=_flag(
            item.get("forwardOriginalToken"), f"{path}.forwardOriginalToken"
        ),
        jwks_timeout=None
        if item.get("timeout") is None
        else _positive_duration(item["timeout"], f"{path}.timeout"),
    )


_JWK_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x"), "oct": ("k",)}


def _usable_jwk(key: Any) -> bool:
    if not fields.is_mapping(key):
        return False
    members = _JWK_MEMBERS.get(key.get("kty"))  # type: ignore[arg-type]
    return members is not None and all(isinstance(key.get(m), str) for m in members)


def _flag(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise fields.Bad(f"{path} must be true or false")
    return value


def _strings(raw: Any, path: str) -> tuple[str, ...]:
    return tuple(fields.nonempty(v, f"{path}[{i}]") for i, v in enumerate(fields.seq(raw, path)))


def _token_headers(raw: Any, path: str) -> tuple[model.TokenHeader, ...]:
    out = []
    for i, item_raw in enumerate(fields.seq(raw, path)):
        item = fields.mapping(item_raw, f"{path}[{i}]", required=True)
        _known(item, f"{path}[{i}]", {"name", "prefix"})
        out.append(
            model.TokenHeader(
                name=_header(item.get("name"), f"{path}[{i}].name"),
                prefix=fields.string(item.get("prefix", ""), f"{path}[{i}].prefix"),
            )
        )
    return tuple(out)


def _claim_headers(raw: Any, path: str) -> tuple[model.ClaimHeader, ...]:
    out = []
    for i, item_raw in enumerate(fields.seq(raw, path)):
        item = fields.mapping(item_raw, f"{path}[{i}]", required=True)
        _known(item, f"{path}[{i}]", {"header", "claim"})
        out.append(
            model.ClaimHeader(
                claim=fields.nonempty(item.get("claim"), f"{path}[{i}].claim"),
                header=_header(item.get("header"), f"{path}[{i}].header"),
            )
        )
    return tuple(out)

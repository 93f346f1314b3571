"""One HTTPRoute or GRPCRoute rule → its matches, its action and the clusters it needs.

A rule that cannot be honoured exactly (an unsupported or malformed filter, incompatible
filters, a bad match) raises ``fields.Bad(message, reason)`` and is dropped by the caller. A
backendRef that does not resolve does not drop the rule: it stays in the split with no cluster
(its share of requests gets 500, as the spec requires) and is reported through ResolvedRefs.
Mesh routes need no ReferenceGrant for backends in other namespaces (GEP-1294, "Namespace
boundaries": routes augment Services rather than expose them), so none is consulted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from waypoint import model, wellknown
from waypoint.translate import fields, filters, matches, services, status

HTTP_FILTERS = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
)
GRPC_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror")
BACKEND_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier")
MAX_WEIGHT = 1_000_000


@dataclasses.dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Rule:
    """A parsed rule; ``action`` is a Route whose name and match are filled in per match."""

    id: str
    index: int
    matches: tuple[tuple[model.RouteMatch, matches.Rank], ...]
    action: model.Route
    clusters: tuple[model.Cluster, ...]
    unresolved: tuple[Problem, ...]


@dataclasses.dataclass(frozen=True)
class Context:
    world: services.World
    namespace: str  # the route's
    grpc: bool


def drop(message: str, reason: str = status.R_UNSUPPORTED_VALUE) -> fields.Bad:
    return fields.Bad(message, reason)


def resolve_backend(
    ctx: Context, raw: Any, path: str
) -> tuple[model.Cluster | None, Problem | None]:
    item = fields.mapping(raw, path, required=True)
    group = fields.opt_string(item.get("group"), f"{path}.group") or wellknown.CORE_GROUP
    kind = fields.opt_string(item.get("kind"), f"{path}.kind") or "Service"
    name = fields.nonempty(item.get("name"), f"{path}.name")
    if group not in (wellknown.CORE_GROUP, "core") or kind != "Service":
        return None, Problem(
            status.R_INVALID_KIND,
            f"{path} refers to kind {kind} of group {group!r}; only core Services are supported",
        )
    namespace = fields.opt_string(item.get("namespace"), f"{path}.namespace") or ctx.namespace
    if item.get("port") is None:
        return None, Problem(
            status.R_BACKEND_NOT_FOUND, f"{path}.port is required for a Service backend"
        )
    number = fields.port(item.get("port"), f"{path}.port")
    svc = ctx.world.services.get((namespace, name))
    if svc is None:
        return None, Problem(
            status.R_BACKEND_NOT_FOUND, f"{path}: Service {namespace}/{name} not found"
        )
    if svc.type == "ExternalName":
        return None, Problem(
            status.R_BACKEND_NOT_FOUND,
            f"{path}: Service {namespace}/{name} is ExternalName, which is not a valid backend",
        )
    port = svc.port(number)
    if port is None:
        return None, Problem(
            status.R_BACKEND_NOT_FOUND,
            f"{path}: Service {namespace}/{name} has no TCP port {number}",
        )
    return ctx.world.service_cluster(svc, port, grpc=ctx.grpc), None


@dataclasses.dataclass
class _Filters:
    request_headers: model.HeaderModifier | None = None
    response_headers: model.HeaderModifier | None = None
    redirect: model.Redirect | None = None
    rewrite: model.Rewrite | None = None
    mirrors: list[tuple[Any, str, float]] = dataclasses.field(default_factory=list)


def _config_key(type_: str) -> str:
    return "urlRewrite" if type_ == "URLRewrite" else type_[0].lower() + type_[1:]


def _filters(raw: Any, path: str, allowed: tuple[str, ...]) -> _Filters:
    result = _Filters()
    seen: set[str] = set()
    for i, item_raw in enumerate(fields.seq(raw, path)):
        where = f"{path}[{i}]"
        item = fields.mapping(item_raw, where, required=True)
        type_ = fields.nonempty(item.get("type"), f"{where}.type")
        if type_ not in allowed:
            raise drop(
                f"{where}: filter type {type_} is not supported here (supported: {', '.join(allowed)})"
            )
        if type_ in seen and type_ != "RequestMirror":
            raise drop(f"{where}: filter type {type_} may appear only once per rule")
        seen.add(type_)
        key = _config_key(type_)
        config = item.get(key)
        if config is None:
            raise drop(f"{where}.{key} is required for filter type {type_}")
        _apply(result, type_, config, f"{where}.{key}")
    return result


def _apply(result: _Filters, type_: str, config: Any, path: str) -> None:
    if type_ == "RequestHeaderModifier":
        result.request_headers = filters.header_modifier(config, path)
    elif type_ == "ResponseHeaderModifier":
        result.response_headers = filters.header_modifier(config, path)
    elif type_ == "RequestRedirect":
        result.redirect = filters.redirect(config, path)
    elif type_ == "URLRewrite":
        result.rewrite = filters.rewrite(config, path)
    else:
        item = fields.mapping(config, path, required=True)
        result.mirrors.append(
            (item.get("backendRef"), f"{path}.backendRef", filters.mirror_percent(item, path))
        )


def _matches(
    ctx: Context, raw: Any, path: str
) -> tuple[tuple[model.RouteMatch, matches.Rank], ...]:
    items = fields.seq(raw, path)
    if not items:
        return ((matches.MATCH_ALL, matches.http_rank(matches.MATCH_ALL)),)
    if ctx.grpc:
        return tuple(matches.grpc_match(item, f"{path}[{i}]") for i, item in enumerate(items))
    parsed = [matches.http_match(item, f"{path}[{i}]") for i, item in enumerate(items)]
    return tuple((match, matches.http_rank(match)) for match in parsed)


def _uses_prefix_replacement(found: _Filters) -> bool:
    for modifier in (
        found.redirect.path if found.redirect else None,
        found.rewrite.path if found.rewrite else None,
    ):
        if modifier is not None and modifier.type is model.PathModifierType.PREFIX:
            return True
    return False


def _check_compatible(
    found: _Filters,
    refs: Any,
    found_matches: tuple[tuple[model.RouteMatch, matches.Rank], ...],
    path: str,
) -> None:
    """The combinations the CRD's validation rules forbid."""
    if found.redirect is not None and found.rewrite is not None:
        raise drop(
            f"{path}: RequestRedirect and URLRewrite cannot be used together",
            status.R_INCOMPATIBLE_FILTERS,
        )
    if found.redirect is not None and refs:
        raise drop(
            f"{path}: RequestRedirect cannot be used together with backendRefs",
            status.R_INCOMPATIBLE_FILTERS,
        )
    if _uses_prefix_replacement(found) and not all(matches.is_prefix(m) for m, _ in found_matches):
        raise drop(
            f"{path}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"
        )


def _mirrors(
    ctx: Context, found: _Filters, clusters: list[model.Cluster], unresolved: list[Problem]
) -> tuple[model.Mirror, ...]:
    """Mirrors whose backend resolves; the others are reported and left out."""
    mirrors = []
    for mirror_raw, mirror_path, percent in found.mirrors:
        cluster, problem = resolve_backend(ctx, mirror_raw, mirror_path)
        if problem is not None:
            unresolved.append(problem)
        if cluster is not None:
            clusters.append(cluster)
            mirrors.append(model.Mirror(cluster=cluster.name, percent=percent))
    return tuple(mirrors)


def parse_rule(ctx: Context, raw: Any, position: int, path: str) -> Rule:
    rule = fields.mapping(raw, path, required=True)
    name = fields.opt_string(rule.get("name"), f"{path}.name")
    found_matches = _matches(ctx, rule.get("matches"), f"{path}.matches")
    found = _filters(
        rule.get("filters"), f"{path}.filters", GRPC_FILTERS if ctx.grpc else HTTP_FILTERS
    )
    refs = fields.seq(rule.get("backendRefs"), f"{path}.backendRefs")
    _check_compatible(found, refs, found_matches, path)
    clusters: list[model.Cluster] = []
    unresolved: list[Problem] = []
    backends = _backends(ctx, refs, f"{path}.backendRefs", clusters, unresolved)
    mirrors = _mirrors(ctx, found, clusters, unresolved)
    timeouts = None if ctx.grpc else filters.timeouts(rule.get("timeouts"), f"{path}.timeouts")
    retry = None if ctx.grpc else filters.retry(rule.get("retry"), f"{path}.retry")
    forwards = found.redirect is None and any(b.cluster is not None for b in backends)
    action = model.Route(
        name="",
        match=matches.MATCH_ALL,
        backends=tuple(backends) if forwards else (),
        redirect=found.redirect,
        direct_status=None if forwards or found.redirect is not None else 500,
        request_headers=found.request_headers,
        response_headers=found.response_headers,
        rewrite=found.rewrite,
        mirrors=mirrors,
        timeouts=timeouts,
        retry=retry,
    )
    return Rule(
        id=name or str(position),
        index=position,
        matches=found_matches,
        action=action,
        clusters=tuple(clusters),
        unresolved=tuple(unresolved),
    )


def _backends(
    ctx: Context, refs: Any, path: str, clusters: list[model.Cluster], unresolved: list[Problem]
) -> list[model.WeightedBackend]:
    """The weighted split; weight-0 refs are resolved (and reported) but take no traffic."""
    backends = []
    for i, raw in enumerate(refs):
        where = f"{path}[{i}]"
        item = fields.mapping(raw, where, required=True)
        weight_raw = item.get("weight")
        weight = (
            1
            if weight_raw is None
            else fields.integer(weight_raw, f"{where}.weight", 0, MAX_WEIGHT)
        )
        found = _filters(item.get("filters"), f"{where}.filters", BACKEND_FILTERS)
        cluster, problem = resolve_backend(ctx, item, where)
        if problem is not None:
            unresolved.append(problem)
        if cluster is not None:
            clusters.append(cluster)
        if weight == 0:
            continue
        backends.append(
            model.WeightedBackend(
                cluster=cluster.name if cluster else None,
                weight=weight,
                request_headers=found.request_headers,
                response_headers=found.response_headers,
            )
        )
    return backends

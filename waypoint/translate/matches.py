"""HTTPRoute and GRPCRoute matches → ``model.RouteMatch``, and their precedence.

Validation follows the Gateway API CRD rules (path values, header names, methods), so config
that the API server would refuse never reaches Envoy. Regular expressions must be RE2: Envoy
refuses the whole config on a bad one, so lookaround and back-references are rejected here.

Precedence (Gateway API HTTPRoute spec): Exact path over PathPrefix, longer prefix first; then
a method match; then more header matches; then more query matches. Regular-expression paths
rank after all prefixes (the spec leaves them implementation-specific; Istio does the same).
GRPCRoute (its spec): more characters in the matched service, then in the method, then more
header matches. Ties go to the older route, then ``namespace/name``, then rule and match order.
"""

from __future__ import annotations

import re
from typing import Any

from waypoint import model
from waypoint.translate import fields

Rank = tuple[int, int, int, int, int]

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_GRPC_SERVICE = re.compile(r"^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$", re.IGNORECASE)
_GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P=|\\[1-9]|(?<!\\)[*+?}]\+")
_TYPE_RANK = {model.MatchType.EXACT: 0, model.MatchType.PREFIX: 1, model.MatchType.REGEX: 2}

MATCH_ALL = model.RouteMatch(path=model.PathMatch(model.MatchType.PREFIX, "/"))


def check_regex(pattern: str, path: str) -> str:
    """The pattern, if RE2 (as far as Python can tell) accepts it; else ``Bad``."""
    if _NOT_RE2.search(pattern):
        raise fields.Bad(
            f"{path}: {pattern!r} uses lookaround, back-references or possessive "
            "quantifiers, which RE2 does not support"
        )
    try:
        re.compile(pattern)
    except re.error as exc:
        raise fields.Bad(f"{path}: {pattern!r} is not a valid regular expression ({exc})") from None
    return pattern


def _match_type(value: Any, path: str, allowed: tuple[str, ...], default: str) -> model.MatchType:
    text = fields.opt_string(value, path) or default
    if text not in allowed:
        raise fields.Bad(f"{path} must be one of {', '.join(allowed)}, not {text!r}")
    return model.MatchType(text)


def _path(raw: Any, path: str) -> model.PathMatch:
    item = fields.mapping(raw, path)
    kind = _match_type(
        item.get("type"), f"{path}.type", ("Exact", "PathPrefix", "RegularExpression"), "PathPrefix"
    )
    value = fields.opt_string(item.get("value"), f"{path}.value")
    value = "/" if value is None else value
    if kind is model.MatchType.REGEX:
        return model.PathMatch(kind, check_regex(value, f"{path}.value"))
    _check_path_value(value, f"{path}.value")
    return model.PathMatch(kind, value)


def _check_path_value(value: str, path: str) -> None:
    if not value.startswith("/"):
        raise fields.Bad(f"{path} must be an absolute path starting with '/', not {value!r}")
    for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if bad in value:
            raise fields.Bad(f"{path} must not contain {bad!r}: {value!r}")
    if value.endswith(("/..", "/.")):
        raise fields.Bad(f"{path} must not end with '/.' or '/..': {value!r}")
    if not _PATH_CHARS.match(value):
        raise fields.Bad(f"{path} holds characters not allowed in a path: {value!r}")


def _values(raw: Any, path: str, case_insensitive: bool) -> tuple[model.ValueMatch, ...]:
    """Header or query matches; a repeated name keeps only its first entry, as the spec says."""
    found: list[model.ValueMatch] = []
    seen: set[str] = set()
    for i, item_raw in enumerate(fields.seq(raw, path)):
        where = f"{path}[{i}]"
        item = fields.mapping(item_raw, where, required=True)
        kind = _match_type(
            item.get("type"), f"{where}.type", ("Exact", "RegularExpression"), "Exact"
        )
        name = fields.nonempty(item.get("name"), f"{where}.name")
        if not _TOKEN.match(name):
            raise fields.Bad(f"{where}.name {name!r} is not a valid name")
        value = fields.string(item.get("value"), f"{where}.value")
        if kind is model.MatchType.REGEX:
            check_regex(value, f"{where}.value")
        key = name.lower() if case_insensitive else name
        if key in seen:
            continue
        seen.add(key)
        found.append(model.ValueMatch(name=name, value=value, type=kind))
    return tuple(found)


def http_match(raw: Any, path: str) -> model.RouteMatch:
    item = fields.mapping(raw, path, required=True)
    method = fields.opt_string(item.get("method"), f"{path}.method")
    if method is not None and method not in METHODS:
        raise fields.Bad(f"{path}.method must be one of {', '.join(METHODS)}, not {method!r}")
    return model.RouteMatch(
        path=_path(item.get("path"), f"{path}.path"),
        headers=_values(item.get("headers"), f"{path}.headers", case_insensitive=True),
        query=_values(item.get("queryParams"), f"{path}.queryParams", case_insensitive=False),
        method=method,
    )


def http_rank(match: model.RouteMatch) -> Rank:
    path = match.path or MATCH_ALL.path
    assert path is not None
    return (
        _TYPE_RANK[path.type],
        -len(path.value),
        0 if match.method else 1,
        -len(match.headers),
        -len(match.query),
    )


def grpc_match(raw: Any, path: str) -> tuple[model.RouteMatch, Rank]:
    """A GRPCRouteMatch as a path match on ``/<service>/<method>``, with its precedence."""
    item = fields.mapping(raw, path, required=True)
    headers = _values(item.get("headers"), f"{path}.headers", case_insensitive=True)
    method_raw = item.get("method")
    if method_raw is None:
        return model.RouteMatch(path=MATCH_ALL.path, headers=headers), (0, 0, 0, -len(headers), 0)
    where = f"{path}.method"
    method = fields.mapping(method_raw, where)
    kind = _match_type(method.get("type"), f"{where}.type", ("Exact", "RegularExpression"), "Exact")
    service = fields.opt_string(method.get("service"), f"{where}.service") or None
    name = fields.opt_string(method.get("method"), f"{where}.method") or None
    if service is None and name is None:
        raise fields.Bad(f"{where}: one or both of service and method must be given")
    rank: Rank = (0, -len(service or ""), -len(name or ""), -len(headers), 0)
    if kind is model.MatchType.REGEX:
        svc_re = check_regex(service, f"{where}.service") if service else ".+"
        name_re = check_regex(name, f"{where}.method") if name else ".+"
        regex = model.PathMatch(model.MatchType.REGEX, f"/{svc_re}/{name_re}")
        return model.RouteMatch(path=regex, headers=headers), rank
    if service is not None and not _GRPC_SERVICE.match(service):
        raise fields.Bad(f"{where}.service {service!r} is not a valid gRPC service name")
    if name is not None and not _GRPC_METHOD.match(name):
        raise fields.Bad(f"{where}.method {name!r} is not a valid gRPC method name")
    if service is not None and name is not None:
        exact = model.PathMatch(model.MatchType.EXACT, f"/{service}/{name}")
        return model.RouteMatch(path=exact, headers=headers), rank
    if service is not None:
        prefix = model.PathMatch(model.MatchType.PREFIX, f"/{service}/")
        return model.RouteMatch(path=prefix, headers=headers), rank
    regex = model.PathMatch(model.MatchType.REGEX, f"/[^/]+/{re.escape(name or '')}")
    return model.RouteMatch(path=regex, headers=headers), rank


def is_prefix(match: model.RouteMatch) -> bool:
    return match.path is not None and match.path.type is model.MatchType.PREFIX

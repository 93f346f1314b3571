"""Envoy's route matching, for the matchers the waypoint config uses.

Each matcher returns ``None`` when it matches and otherwise a short reason, so a trace can
say why every earlier route was passed over. Semantics follow Envoy 1.40 (router
``config_impl.cc`` and ``common/matchers.cc``):

- path matchers (``prefix``, ``path``, ``path_separated_prefix``, ``safe_regex``) look at the
  path without its query string and fragment; ``safe_regex`` must match the whole path;
- a header matcher sees all values of a header joined with ``,``; a missing header never
  matches (an inverted matcher then does);
- a query parameter matcher sees the first value of the parameter as sent (Envoy does not
  percent-decode it);
- a filter state matcher sees the string object under its key, if any;
- paths are normalised first (``normalize_path``: unreserved escapes decoded, dot segments
  removed; slashes are not merged);
- virtual hosts are chosen by exact domain, then the longest ``*.suffix``, then the longest
  ``prefix.*``, then ``*``.

RE2 is approximated by Python's ``re`` (full match), which agrees on the syntax Gateway API
regexes and our own generated patterns use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.type.matcher.v3 import filter_state_pb2, regex_pb2, string_pb2

Headers = Sequence[tuple[str, str]]


class UnsupportedConfig(ValueError):
    """The config uses a matcher the simulator does not model; the message names it."""


@functools.cache
def compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UnsupportedConfig(f"regex {pattern!r} is not supported: {exc}") from exc


def regex_matches(matcher: regex_pb2.RegexMatcher, value: str) -> bool:
    return compile_regex(matcher.regex).fullmatch(value) is not None


def describe_string(matcher: string_pb2.StringMatcher) -> str:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":
        text = f"regex {matcher.safe_regex.regex!r}"
    else:
        text = f"{kind} {getattr(matcher, kind or 'exact')!r}"
    return text + (" (ignore case)" if matcher.ignore_case else "")


def string_matches(matcher: string_pb2.StringMatcher, value: str) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":
        return regex_matches(matcher.safe_regex, value)
    if kind not in ("exact", "prefix", "suffix", "contains"):
        raise UnsupportedConfig(f"string matcher {kind!r} is not supported")
    expected: str = getattr(matcher, kind)
    if matcher.ignore_case:
        expected, value = expected.lower(), value.lower()
    if kind == "exact":
        return value == expected
    if kind == "prefix":
        return value.startswith(expected)
    if kind == "suffix":
        return value.endswith(expected)
    return expected in value


def header_value(headers: Headers, name: str) -> str | None:
    """All values of ``name`` joined with ``,``, as Envoy's header matchers see them."""
    values = [v for k, v in headers if k.lower() == name.lower()]
    return ",".join(values) if values else None


def strip_query(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0]


def query_string(path: str) -> str:
    _, sep, rest = path.partition("?")
    return rest.split("#", 1)[0] if sep else ""


def query_first(path: str, name: str) -> str | None:
    """The first raw value of a query parameter: Envoy's route matching does not decode."""
    query = query_string(path)
    for param in query.split("&") if query else ():
        key, _, value = param.partition("=")
        if key == name:
            return value
    return None


def header_matcher(matcher: rc_pb2.HeaderMatcher, headers: Headers) -> str | None:
    value = header_value(headers, matcher.name)
    kind = matcher.WhichOneof("header_match_specifier")
    if kind == "present_match":
        matched = (value is not None) == matcher.present_match
        what = "present" if matcher.present_match else "absent"
    elif value is None:
        return None if matcher.invert_match else f"header {matcher.name} is absent"
    elif kind == "string_match":
        matched = string_matches(matcher.string_match, value)
        what = describe_string(matcher.string_match)
    elif kind == "exact_match":
        matched, what = value == matcher.exact_match, f"exact {matcher.exact_match!r}"
    elif kind == "safe_regex_match":
        matched = regex_matches(matcher.safe_regex_match, value)
        what = f"regex {matcher.safe_regex_match.regex!r}"
    elif kind == "prefix_match":
        matched, what = value.startswith(matcher.prefix_match), f"prefix {matcher.prefix_match!r}"
    else:
        raise UnsupportedConfig(f"header matcher {kind!r} on {matcher.name} is not supported")
    if matched != matcher.invert_match:
        return None
    negation = "not " if not matcher.invert_match else ""
    return f"header {matcher.name}={value!r} is {negation}{what}"


def query_matcher(matcher: rc_pb2.QueryParameterMatcher, path: str) -> str | None:
    value = query_first(path, matcher.name)
    kind = matcher.WhichOneof("query_parameter_match_specifier")
    if kind == "present_match":
        return None if value is not None else f"query parameter {matcher.name} is absent"
    if value is None:
        return f"query parameter {matcher.name} is absent"
    if kind != "string_match":
        raise UnsupportedConfig(f"query parameter matcher {kind!r} is not supported")
    if string_matches(matcher.string_match, value):
        return None
    return f"query {matcher.name}={value!r} is not {describe_string(matcher.string_match)}"


def filter_state_matcher(
    matcher: filter_state_pb2.FilterStateMatcher, state: Mapping[str, str]
) -> str | None:
    value = state.get(matcher.key)
    if matcher.WhichOneof("matcher") != "string_match":
        raise UnsupportedConfig(f"filter state matcher on {matcher.key} is not a string matcher")
    if value is None:
        return f"filter state {matcher.key} is not set (no client identity)"
    if string_matches(matcher.string_match, value):
        return None
    return f"filter state {matcher.key}={value!r} is not {describe_string(matcher.string_match)}"


def _case(value: str, sensitive: bool) -> str:
    return value if sensitive else value.lower()


def path_matcher(match: rc_pb2.RouteMatch, path: str, method: str) -> str | None:
    kind = match.WhichOneof("path_specifier")
    sensitive = not match.HasField("case_sensitive") or match.case_sensitive.value
    if kind == "connect_matcher":
        return None if method == "CONNECT" else f"{method} is not CONNECT"
    if method == "CONNECT":
        return "CONNECT requests match only connect_matcher routes"
    bare = _case(strip_query(path), sensitive)
    if kind == "prefix":
        ok = bare.startswith(_case(match.prefix, sensitive))
        what = f"prefix {match.prefix!r}"
    elif kind == "path":
        ok, what = bare == _case(match.path, sensitive), f"path {match.path!r}"
    elif kind == "path_separated_prefix":
        prefix = _case(match.path_separated_prefix, sensitive)
        ok = bare == prefix or bare.startswith(prefix + "/")
        what = f"path-separated prefix {match.path_separated_prefix!r}"
    elif kind == "safe_regex":
        ok = compile_regex(match.safe_regex.regex).fullmatch(strip_query(path)) is not None
        what = f"regex {match.safe_regex.regex!r}"
    else:
        raise UnsupportedConfig(f"path specifier {kind!r} is not supported")
    return None if ok else f"path {strip_query(path)!r} does not match {what}"


_UNMODELLED = ("runtime_fraction", "tls_context", "dynamic_metadata", "path_match_policy")


def route_matcher(
    match: rc_pb2.RouteMatch,
    method: str,
    path: str,
    headers: Headers,
    state: Mapping[str, str],
) -> str | None:
    """Why ``match`` does not take the request, or None when it does (Envoy's order)."""
    for field in _UNMODELLED:
        if match.HasField(field) if field != "dynamic_metadata" else len(match.dynamic_metadata):
            raise UnsupportedConfig(f"route match field {field} is not supported")
    reason = path_matcher(match, path, method)
    if reason is not None:
        return reason
    if match.HasField("grpc"):
        content_type = header_value(headers, "content-type") or ""
        if not content_type.startswith("application/grpc"):
            return "not a gRPC request (content-type is not application/grpc)"
    for header in match.headers:
        reason = header_matcher(header, headers)
        if reason is not None:
            return reason
    for query in match.query_parameters:
        reason = query_matcher(query, path)
        if reason is not None:
            return reason
    for fs in match.filter_state:
        reason = filter_state_matcher(fs, state)
        if reason is not None:
            return reason
    return None


def _domain_rank(domain: str, host: str) -> tuple[int, int] | None:
    """Lower sorts first: (tier, -specificity); None when the domain does not take host."""
    domain, host = domain.lower(), host.lower()
    if domain == host:
        return (0, 0)
    if domain == "*":
        return (3, 0)
    if domain.startswith("*") and host.endswith(domain[1:]) and len(host) > len(domain) - 1:
        return (1, -len(domain))
    if domain.endswith("*") and host.startswith(domain[:-1]) and len(host) > len(domain) - 1:
        return (2, -len(domain))
    return None


def virtual_host(hosts: Sequence[rc_pb2.VirtualHost], authority: str) -> rc_pb2.VirtualHost | None:
    best: tuple[tuple[int, int], int] | None = None
    for index, vhost in enumerate(hosts):
        for domain in vhost.domains:
            rank = _domain_rank(domain, authority)
            if rank is not None and (best is None or (rank, index) < best):
                best = (rank, index)
    return hosts[best[1]] if best is not None else None


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unescape_unreserved(found: re.Match[str]) -> str:
    char = chr(int(found.group(1), 16))
    return char if char in _UNRESERVED else "%" + found.group(1).upper()


def normalize_path(path: str) -> str:
    """The HCM's ``normalize_path`` (RFC 3986, as Envoy's canonicaliser does it).

    Percent-escapes of unreserved characters are decoded (``%76`` is ``v``; other escapes
    such as ``%2F`` stay, upper-cased), then dot segments are removed. The query string is
    left alone.
    """
    bare, sep, query = path.partition("?")
    bare = _ESCAPE.sub(_unescape_unreserved, bare)
    out: list[str] = []
    segments = bare.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    normalized = "/".join(out)
    if not normalized.startswith("/"):
        normalized = "/" + normalized
    return normalized + sep + query


def strip_port(authority: str) -> str:
    """The HCM's ``strip_any_host_port``: drop ``:port`` (IPv6 literals keep their brackets)."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end >= 0 else authority
    host, sep, port = authority.rpartition(":")
    return host if sep and port.isdigit() else authority

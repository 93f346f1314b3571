"""What a matched route does to a request: header mutations, path and host rewrites, and the
``Location`` of a redirect, computed the way Envoy's router does.

- Header mutations: removals first, then additions, per level; the weighted cluster's level
  runs before the route's (Envoy's default, ``most_specific_header_mutations_wins`` unset).
- ``prefix_rewrite`` replaces the part of the path the route's path matcher consumed (the
  query string rides along); ``regex_rewrite`` substitutes every match in the path without
  its query string, and the query string is put back.
- A redirect keeps the request's scheme (``http`` inside the tunnel), host (already
  port-stripped by the HCM) and path unless the action replaces them; ``port_redirect`` adds
  ``:port``; the query string is kept unless ``strip_query`` or ``path_redirect`` has its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.type.matcher.v3 import regex_pb2

from waypoint.simulate import matching

Headers = tuple[tuple[str, str], ...]

REDIRECT_STATUS = {
    rc_pb2.RedirectAction.MOVED_PERMANENTLY: 301,
    rc_pb2.RedirectAction.FOUND: 302,
    rc_pb2.RedirectAction.SEE_OTHER: 303,
    rc_pb2.RedirectAction.TEMPORARY_REDIRECT: 307,
    rc_pb2.RedirectAction.PERMANENT_REDIRECT: 308,
}
_APPEND = int(base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD)
_ADD_IF_ABSENT = int(base_pb2.HeaderValueOption.ADD_IF_ABSENT)
_OVERWRITE_OR_ADD = int(base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
_OVERWRITE = int(base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS)


def _action(option: base_pb2.HeaderValueOption) -> int:
    if option.HasField("append"):  # the deprecated flag wins when set
        return _APPEND if option.append.value else _OVERWRITE_OR_ADD
    return int(option.append_action)


def describe_mutations(
    to_add: Sequence[base_pb2.HeaderValueOption], to_remove: Sequence[str]
) -> tuple[str, ...]:
    """``remove x``, ``set k: v``, ``add k: v`` lines in the order Envoy applies them."""
    verbs = {_APPEND: "add", _ADD_IF_ABSENT: "add-if-absent", _OVERWRITE: "overwrite"}
    out = [f"remove {name.lower()}" for name in to_remove]
    for option in to_add:
        verb = verbs.get(_action(option), "set")
        out.append(f"{verb} {option.header.key.lower()}: {option.header.value}")
    return tuple(out)


def mutate(
    headers: Headers,
    to_add: Sequence[base_pb2.HeaderValueOption],
    to_remove: Sequence[str],
) -> Headers:
    removed = {name.lower() for name in to_remove}
    out = [(k, v) for k, v in headers if k.lower() not in removed]
    for option in to_add:
        name, value = option.header.key.lower(), option.header.value
        present = any(k.lower() == name for k, _ in out)
        action = _action(option)
        if action == _APPEND or (action == _ADD_IF_ABSENT and not present):
            out.append((name, value))
        elif action == _OVERWRITE_OR_ADD or (action == _OVERWRITE and present):
            out = [(k, v) for k, v in out if k.lower() != name] + [(name, value)]
    return tuple(out)


def _expand(substitution: str, match: re.Match[str]) -> str:
    """RE2's rewrite string: ``\\N`` is group N, ``\\\\`` a backslash, all else literal."""

    def group(found: re.Match[str]) -> str:
        token = found.group(1)
        return "\\" if token == "\\" else match.group(int(token)) or ""

    return re.sub(r"\\(\d|\\)", group, substitution)


def regex_substitute(rewrite: regex_pb2.RegexMatchAndSubstitute, path: str) -> str:
    """Substitute in the path without its query string, then put the query string back."""
    bare, sep, query = path.partition("?")
    pattern = matching.compile_regex(rewrite.pattern.regex)
    replaced = pattern.sub(lambda m: _expand(rewrite.substitution, m), bare)
    return replaced + sep + query


def matched_prefix(match: rc_pb2.RouteMatch) -> str | None:
    """The part of the path a prefix rewrite replaces (None for regex routes)."""
    kind = match.WhichOneof("path_specifier")
    if kind in ("prefix", "path", "path_separated_prefix"):
        value: str = getattr(match, kind)
        return value
    return None


def rewrite_path(
    match: rc_pb2.RouteMatch,
    path: str,
    prefix_rewrite: str,
    regex_rewrite: regex_pb2.RegexMatchAndSubstitute | None,
) -> str:
    if prefix_rewrite:
        prefix = matched_prefix(match)
        if prefix is None:
            raise matching.UnsupportedConfig("prefix_rewrite on a route without a prefix match")
        return prefix_rewrite + path[len(prefix) :]
    if regex_rewrite is not None:
        return regex_substitute(regex_rewrite, path)
    return path


def location(
    redirect: rc_pb2.RedirectAction, match: rc_pb2.RouteMatch, host: str, path: str
) -> str:
    """The ``Location`` header of a redirect for a request to ``host`` (no port) ``path``."""
    if redirect.scheme_redirect:
        scheme = redirect.scheme_redirect.lower()
    else:
        scheme = "https" if redirect.https_redirect else "http"
    target_host = redirect.host_redirect or host
    port = f":{redirect.port_redirect}" if redirect.port_redirect else ""
    kind = redirect.WhichOneof("path_rewrite_specifier")
    if kind == "path_redirect":
        new_path = redirect.path_redirect
        if "?" not in new_path and matching.query_string(path):
            new_path += "?" + matching.query_string(path)
    elif kind == "prefix_rewrite":
        new_path = rewrite_path(match, path, redirect.prefix_rewrite, None)
    elif kind == "regex_rewrite":
        new_path = regex_substitute(redirect.regex_rewrite, path)
    else:
        new_path = path
    if redirect.strip_query:
        new_path = new_path.split("?", 1)[0]
    return f"{scheme}://{target_host}{port}{new_path}"

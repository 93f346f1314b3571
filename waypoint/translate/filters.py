"""Route filters, timeouts and retries → their IR values, validated as the CRDs validate them.

Each function reads one Gateway API structure and raises ``fields.Bad`` naming the field when
it is wrong; the rule that holds it is then dropped and its route parents say why.
Durations use the Gateway API duration format (GEP-2257): up to four ``<1-5 digits><h|m|s|ms>``
parts, such as ``10s``, ``500ms`` or ``1h1m``.
"""

from __future__ import annotations

import re
from typing import Any

from waypoint import model
from waypoint.translate import fields

_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
REDIRECT_CODES = (301, 302, 303, 307, 308)


def duration(value: Any, path: str) -> float:
    text = fields.string(value, path)
    if not _DURATION.match(text):
        raise fields.Bad(f"{path} {text!r} is not a Gateway API duration (like 10s, 500ms, 1h1m)")
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    return round(seconds, 3)


def _header_name(value: Any, path: str) -> str:
    name = fields.nonempty(value, path)
    if not _HEADER_NAME.match(name):
        raise fields.Bad(f"{path} {name!r} is not a valid header name")
    return name


def _unique(names: list[str], path: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:
            raise fields.Bad(f"{path} names header {name!r} twice (header names ignore case)")
        seen.add(name.lower())


def _headers(raw: Any, path: str) -> tuple[model.Header, ...]:
    found = []
    for i, item_raw in enumerate(fields.seq(raw, path)):
        item = fields.mapping(item_raw, f"{path}[{i}]", required=True)
        found.append(
            model.Header(
                name=_header_name(item.get("name"), f"{path}[{i}].name"),
                value=fields.string(item.get("value"), f"{path}[{i}].value"),
            )
        )
    _unique([h.name for h in found], path)
    return tuple(found)


def header_modifier(raw: Any, path: str) -> model.HeaderModifier:
    item = fields.mapping(raw, path, required=True)
    remove = tuple(
        _header_name(name, f"{path}.remove[{i}]")
        for i, name in enumerate(fields.seq(item.get("remove"), f"{path}.remove"))
    )
    _unique(list(remove), f"{path}.remove")
    return model.HeaderModifier(
        set=_headers(item.get("set"), f"{path}.set"),
        add=_headers(item.get("add"), f"{path}.add"),
        remove=remove,
    )


def path_modifier(raw: Any, path: str) -> model.PathModifier | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    kind = fields.string(item.get("type"), f"{path}.type")
    keys = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}
    if kind not in keys:
        raise fields.Bad(f"{path}.type must be ReplaceFullPath or ReplacePrefixMatch, not {kind!r}")
    for other_kind, other_key in keys.items():
        if other_kind != kind and item.get(other_key) is not None:
            raise fields.Bad(f"{path}.{other_key} must not be set when type is {kind}")
    value = fields.string(item.get(keys[kind]), f"{path}.{keys[kind]}")
    if not value.startswith("/"):
        raise fields.Bad(f"{path}.{keys[kind]} must start with '/', not {value!r}")
    return model.PathModifier(model.PathModifierType(kind), value)


def _hostname(value: Any, path: str) -> str | None:
    text = fields.opt_string(value, path)
    if text is not None and (len(text) > 253 or not _HOSTNAME.match(text)):
        raise fields.Bad(f"{path} {text!r} is not a valid hostname")
    return text


def redirect(raw: Any, path: str) -> model.Redirect:
    item = fields.mapping(raw, path, required=True)
    scheme = fields.opt_string(item.get("scheme"), f"{path}.scheme")
    if scheme is not None and scheme not in ("http", "https"):
        raise fields.Bad(f"{path}.scheme must be http or https, not {scheme!r}")
    code = item.get("statusCode")
    code = 302 if code is None else fields.integer(code, f"{path}.statusCode")
    if code not in REDIRECT_CODES:
        raise fields.Bad(f"{path}.statusCode must be one of {REDIRECT_CODES}, not {code}")
    port = item.get("port")
    return model.Redirect(
        scheme=scheme,
        hostname=_hostname(item.get("hostname"), f"{path}.hostname"),
        path=path_modifier(item.get("path"), f"{path}.path"),
        port=None if port is None else fields.port(port, f"{path}.port"),
        status_code=code,
    )


def rewrite(raw: Any, path: str) -> model.Rewrite:
    item = fields.mapping(raw, path, required=True)
    return model.Rewrite(
        hostname=_hostname(item.get("hostname"), f"{path}.hostname"),
        path=path_modifier(item.get("path"), f"{path}.path"),
    )


def mirror_percent(item: Any, path: str) -> float:
    """``percent`` (0-100) or ``fraction`` (numerator/denominator); neither means 100%."""
    percent, fraction = item.get("percent"), item.get("fraction")
    if percent is not None and fraction is not None:
        raise fields.Bad(f"{path}: only one of percent and fraction may be set")
    if percent is not None:
        return float(fields.integer(percent, f"{path}.percent", 0, 100))
    if fraction is None:
        return 100.0
    frac = fields.mapping(fraction, f"{path}.fraction")
    numerator = fields.integer(frac.get("numerator"), f"{path}.fraction.numerator", 0)
    denominator_raw = frac.get("denominator")
    denominator = (
        100
        if denominator_raw is None
        else fields.integer(denominator_raw, f"{path}.fraction.denominator", 1)
    )
    if numerator > denominator:
        raise fields.Bad(
            f"{path}.fraction: numerator {numerator} exceeds denominator {denominator}"
        )
    return round(100.0 * numerator / denominator, 6)


def timeouts(raw: Any, path: str) -> model.Timeouts | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    request = None if item.get("request") is None else duration(item["request"], f"{path}.request")
    backend = (
        None
        if item.get("backendRequest") is None
        else duration(item["backendRequest"], f"{path}.backendRequest")
    )
    if request and backend is not None and backend > request:
        raise fields.Bad(f"{path}.backendRequest ({backend}s) must not exceed request ({request}s)")
    if request is None and backend is None:
        return None
    return model.Timeouts(request=request, backend_request=backend)


DEFAULT_RETRY_ATTEMPTS = 1  # the spec leaves it to the implementation; Envoy's default


def retry(raw: Any, path: str) -> model.Retry | None:
    if raw is None:
        return None
    item = fields.mapping(raw, path)
    attempts = item.get("attempts")
    codes = tuple(
        fields.integer(code, f"{path}.codes[{i}]", 400, 599)
        for i, code in enumerate(fields.seq(item.get("codes"), f"{path}.codes"))
    )
    backoff = item.get("backoff")
    return model.Retry(
        attempts=DEFAULT_RETRY_ATTEMPTS
        if attempts is None
        else fields.integer(attempts, f"{path}.attempts", 0),
        codes=tuple(sorted(set(codes))),
        backoff_seconds=None if backoff is None else duration(backoff, f"{path}.backoff"),
    )

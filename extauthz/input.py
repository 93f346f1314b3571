"""Build the policy input document, compatible with opa-envoy-plugin.

Existing opa-envoy-plugin policies must work unchanged, so ``attributes`` is the
CheckRequest's attributes in protojson form (lowerCamelCase), and ``parsed_path``,
``parsed_query``, ``parsed_body``, ``truncated_body`` and ``version`` follow that
plugin's rules (Go ``net/url`` parsing, JSON and form bodies, truncation detected from
``content-length``). We add ``jwt`` for a verified token and the SPIFFE principals.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from extauthz import jwt as jwt_auth
from extauthz import protojson

VERSION = {"encoding": "protojson", "ext_authz": "v3"}
# Context extensions a waypoint sets per route (waypoint.envoy.ext_authz and .custom write them).
DECISION_KEY = "decision"  # the Rego decision path for this route
JWT_KEY = "jwt"  # "required": a request without a token is denied with 401
DESTINATION_PRINCIPAL_KEY = "destination_principal"
# Names the header that carries the client's SPIFFE ID. Set only by a waypoint whose filter
# chain overwrites that header on every request, so its value cannot come from the client.
SOURCE_PRINCIPAL_HEADER_KEY = "source_principal_header"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class MalformedRequest(Exception):
    """The CheckRequest cannot be turned into a policy input; the answer is 400."""


def http_of(
    request: external_auth_pb2.CheckRequest,
) -> attribute_context_pb2.AttributeContext.HttpRequest:
    """The HTTP part of a CheckRequest; a non-HTTP check is malformed for us."""
    if not request.attributes.request.HasField("http"):
        raise MalformedRequest("CheckRequest has no attributes.request.http")
    return request.attributes.request.http


def headers_of(http: attribute_context_pb2.AttributeContext.HttpRequest) -> dict[str, str]:
    """Request headers by lower-case name, from ``headers`` or ``header_map``."""
    if http.headers:
        # Envoy sends header names lower-cased (its header map is HTTP/2-style).
        return dict(http.headers)
    out: dict[str, str] = {}
    for header in http.header_map.headers:
        value = header.value or header.raw_value.decode("utf-8", "replace")
        name = header.key.lower()
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def parse_path(path: str) -> tuple[list[str], dict[str, list[str]]]:
    """Split a request target into decoded path segments and query values."""
    if _BAD_ESCAPE.search(path):
        raise MalformedRequest("path has an invalid percent-escape")
    target, _, query = path.partition("?")
    target = target.partition("#")[0]
    segments = [urllib.parse.unquote(s) for s in target.lstrip("/").split("/")]
    parsed_query: dict[str, list[str]] = {}
    for key, value in urllib.parse.parse_qsl(query.partition("#")[0], keep_blank_values=True):
        parsed_query.setdefault(key, []).append(value)
    return segments, parsed_query


def parse_body(
    http: attribute_context_pb2.AttributeContext.HttpRequest, headers: Mapping[str, str]
) -> tuple[Any, bool]:
    """Return ``(parsed_body, truncated_body)`` as opa-envoy-plugin computes them."""
    content_type = headers.get("content-type", "")
    is_json = "application/json" in content_type
    is_form = "application/x-www-form-urlencoded" in content_type
    if not (is_json or is_form):
        return None, False
    body = http.raw_body if http.raw_body else http.body.encode()
    if not body:
        return None, False
    length = headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise MalformedRequest("content-length is not a number")
        if int(length) > len(body):
            return None, True
    if is_json:
        try:
            return json.loads(body), False
        except (UnicodeDecodeError, ValueError):
            raise MalformedRequest("body is not valid JSON") from None
    form: dict[str, list[str]] = {}
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    for key, value in pairs:
        form.setdefault(key, []).append(value)
    return form, False


def source_principal(request: external_auth_pb2.CheckRequest, headers: Mapping[str, str]) -> str:
    """The peer's SPIFFE ID from TLS, else from the header a waypoint vouches for.

    Behind a waypoint's internal listener there is no TLS, so Envoy's ``source.principal``
    is empty; the waypoint then passes the HBONE peer's ID in a header it always overwrites.
    """
    principal = str(request.attributes.source.principal)
    if principal:
        return principal
    header = request.attributes.context_extensions.get(SOURCE_PRINCIPAL_HEADER_KEY)
    return headers.get(str(header).lower(), "") if header else ""


def destination_principal(request: external_auth_pb2.CheckRequest) -> str:
    principal = str(request.attributes.destination.principal)
    return principal or str(
        request.attributes.context_extensions.get(DESTINATION_PRINCIPAL_KEY, "")
    )


def documents(
    request: external_auth_pb2.CheckRequest,
    http: attribute_context_pb2.AttributeContext.HttpRequest,
    headers: Mapping[str, str],
    parsed_path: list[str],
    parsed_query: dict[str, list[str]],
    identity: jwt_auth.Identity | None,
) -> dict[str, Any]:
    """Every part of the policy input but ``attributes`` (the costly one, built on demand)."""
    parsed_body, truncated = parse_body(http, headers)
    doc: dict[str, Any] = {
        "parsed_path": parsed_path,
        "parsed_query": parsed_query,
        "parsed_body": parsed_body,
        "truncated_body": truncated,
        "version": VERSION,
        "source_principal": source_principal(request, headers),
        "destination_principal": destination_principal(request),
    }
    if identity is not None:
        doc["jwt"] = {"provider": identity.provider, "claims": identity.claims}
    return doc


def complete(request: external_auth_pb2.CheckRequest, parts: Mapping[str, Any]) -> dict[str, Any]:
    """The full policy input from :func:`documents`' parts."""
    return {"attributes": protojson.message_to_dict(request.attributes), **parts}

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


def build(
    request: external_auth_pb2.CheckRequest,
    http: attribute_context_pb2.AttributeContext.HttpRequest,
    headers: Mapping[str, str],
    parsed_path: list[str],
    parsed_query: dict[str, list[str]],
    identity: jwt_auth.Identity | None,
) -> dict[str, Any]:
    """The full policy input for one check."""
    parsed_body, truncated = parse_body(http, headers)
    doc: dict[str, Any] = {
        "attributes": protojson.message_to_dict(request.attributes),
        "parsed_path": parsed_path,
        "parsed_query": parsed_query,
        "parsed_body": parsed_body,
        "truncated_body": truncated,
        "version": VERSION,
        "source_principal": request.attributes.source.principal,
        "destination_principal": request.attributes.destination.principal,
    }
    if identity is not None:
        doc["jwt"] = {"provider": identity.provider, "claims": identity.claims}
    return doc

"""Turn a policy result into an Envoy CheckResponse (xds-protos messages).

A result is either a bool or an object in opa-envoy-plugin's shape (``allowed``,
``headers``, ``response_headers_to_add``, ``request_headers_to_remove``,
``query_parameters_to_set``, ``query_parameters_to_remove``, ``body``, ``http_status``,
``dynamic_metadata``). An undefined result (None) denies. A result of any other shape is
a policy error, because guessing would turn a policy bug into an allow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2  # type: ignore[import-untyped,unused-ignore]

Pairs = tuple[tuple[str, str], ...]
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
_KNOWN_KEYS = frozenset(
    {
        "allowed",
        "headers",
        "response_headers_to_add",
        "request_headers_to_remove",
        "query_parameters_to_set",
        "query_parameters_to_remove",
        "body",
        "http_status",
        "dynamic_metadata",
    }
)
_GRPC_CODE = {401: code_pb2.UNAUTHENTICATED, 400: code_pb2.INVALID_ARGUMENT}
WWW_AUTHENTICATE = ("www-authenticate", 'Bearer error="invalid_token"')
JSON_CONTENT_TYPE = ("content-type", "application/json")
_ERROR_NAMES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden"}


class DecisionError(Exception):
    """The policy returned something that is not a decision."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """A parsed policy decision."""

    allowed: bool
    headers: Pairs = ()
    response_headers_to_add: Pairs = ()
    request_headers_to_remove: tuple[str, ...] = ()
    query_parameters_to_set: Pairs = ()
    query_parameters_to_remove: tuple[str, ...] = ()
    body: str = ""
    http_status: int = 403
    dynamic_metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


DENY = Decision(allowed=False)
ALLOW = Decision(allowed=True)


def parse(value: object) -> Decision:
    """Parse a policy result; None (undefined) is a deny."""
    if value is None:
        return DENY
    if isinstance(value, bool):
        return ALLOW if value else DENY
    if not isinstance(value, dict):
        raise DecisionError(f"decision must be a bool or an object, got {type(value).__name__}")
    unknown = sorted(set(value) - _KNOWN_KEYS)
    if unknown:
        raise DecisionError(f"decision has unknown keys {unknown}")
    allowed = value.get("allowed")
    if not isinstance(allowed, bool):
        raise DecisionError("decision.allowed must be a bool")
    status = value.get("http_status", 403)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise DecisionError("decision.http_status must be an integer in [100, 599]")
    body = value.get("body", "")
    if not isinstance(body, str):
        raise DecisionError("decision.body must be a string")
    metadata = value.get("dynamic_metadata", {})
    _check_metadata(metadata)
    return Decision(
        allowed=allowed,
        headers=_pairs(value.get("headers", {}), "headers"),
        response_headers_to_add=_pairs(
            value.get("response_headers_to_add", {}), "response_headers_to_add"
        ),
        request_headers_to_remove=_names(
            value.get("request_headers_to_remove", []), "request_headers_to_remove"
        ),
        query_parameters_to_set=_pairs(
            value.get("query_parameters_to_set", {}), "query_parameters_to_set"
        ),
        query_parameters_to_remove=_names(
            value.get("query_parameters_to_remove", []), "query_parameters_to_remove"
        ),
        body=body,
        http_status=status,
        dynamic_metadata=metadata,
    )


def _check_metadata(metadata: object) -> None:
    if not isinstance(metadata, dict):
        raise DecisionError("decision.dynamic_metadata must be an object")
    if metadata:
        try:
            external_auth_pb2.CheckResponse().dynamic_metadata.update(metadata)
        except (TypeError, ValueError) as exc:
            raise DecisionError(f"decision.dynamic_metadata is not a JSON object: {exc}") from None


def _pairs(raw: object, key: str) -> Pairs:
    if not isinstance(raw, dict):
        raise DecisionError(f"decision.{key} must be an object")
    out: list[tuple[str, str]] = []
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, str):
                raise DecisionError(f"decision.{key}.{name} must be a string or list of strings")
            out.append((name, item))
    return tuple(out)


def _names(raw: object, key: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise DecisionError(f"decision.{key} must be a list of strings")
    return tuple(raw)


def _add_headers(target: Any, pairs: Sequence[tuple[str, str]]) -> None:
    # Messages are filled in place: building them from keyword arguments costs 3x more.
    seen: set[str] = set()
    for name, value in pairs:
        option = target.add()
        option.header.key = name
        option.header.value = value
        # The first value replaces what the client sent; later values of a list append.
        lowered = name.lower()
        option.append_action = _APPEND if lowered in seen else _OVERWRITE
        seen.add(lowered)


def _set_metadata(
    response: external_auth_pb2.CheckResponse, extra: Mapping[str, Any], decision_id: str
) -> None:
    if extra:
        response.dynamic_metadata.update(dict(extra))
    response.dynamic_metadata.fields["decision_id"].string_value = decision_id


def allow_response(
    decision: Decision,
    decision_id: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    extra_remove: Sequence[str] = (),
) -> external_auth_pb2.CheckResponse:
    """An OK response carrying the decision's mutations plus identity headers."""
    response = external_auth_pb2.CheckResponse()
    response.status.code = code_pb2.OK
    ok = response.ok_response
    headers = [*decision.headers, *extra_headers]
    _add_headers(ok.headers, headers)
    set_names = {name.lower() for name, _ in headers}
    ok.headers_to_remove.extend(decision.request_headers_to_remove)
    ok.headers_to_remove.extend(n for n in extra_remove if n.lower() not in set_names)
    _add_headers(ok.response_headers_to_add, decision.response_headers_to_add)
    for key, value in decision.query_parameters_to_set:
        ok.query_parameters_to_set.add(key=key, value=value)
    ok.query_parameters_to_remove.extend(decision.query_parameters_to_remove)
    _set_metadata(response, decision.dynamic_metadata, decision_id)
    return response


def deny_response(
    decision_id: str,
    http_status: int = 403,
    headers: Sequence[tuple[str, str]] = (),
    body: str = "",
    metadata: Mapping[str, Any] | None = None,
    *,
    reason: str | None = None,
) -> external_auth_pb2.CheckResponse:
    """A denied response with the HTTP status, headers and body the client sees.

    With ``reason`` and no ``body``, the body is a short JSON object (``error``, ``message``,
    ``decision_id``), as other gateways answer, so a client or an SRE can tell a policy deny
    from a backend's 403 and find the decision in the log.
    """
    response = external_auth_pb2.CheckResponse()
    response.status.code = _GRPC_CODE.get(http_status, code_pb2.PERMISSION_DENIED)
    denied = response.denied_response
    denied.status.code = http_status  # type: ignore[assignment,unused-ignore]
    if reason is not None and not body:
        body = json_reason(http_status, reason, decision_id)
        headers = [*headers, JSON_CONTENT_TYPE]
    _add_headers(denied.headers, headers)
    denied.body = body
    _set_metadata(response, metadata or {}, decision_id)
    return response


def json_reason(http_status: int, message: str, decision_id: str) -> str:
    error = _ERROR_NAMES.get(http_status, "denied")
    return json.dumps(
        {"error": error, "message": message, "decision_id": decision_id}, separators=(",", ":")
    )


def policy_deny_response(
    decision: Decision, decision_id: str, *, json_body: bool = False
) -> external_auth_pb2.CheckResponse:
    """The response for a policy that decided to deny (its own body, if it gave one)."""
    return deny_response(
        decision_id,
        decision.http_status,
        decision.headers,
        decision.body,
        decision.dynamic_metadata,
        reason="denied by policy" if json_body else None,
    )


def unauthenticated_response(
    decision_id: str, *, json_body: bool = False
) -> external_auth_pb2.CheckResponse:
    """401 for a presented token that failed verification."""
    reason = "the token is not valid" if json_body else None
    return deny_response(decision_id, 401, [WWW_AUTHENTICATE], reason=reason)


def malformed_response(
    decision_id: str, *, json_body: bool = False
) -> external_auth_pb2.CheckResponse:
    """400 for a request we cannot evaluate."""
    if json_body:
        return deny_response(decision_id, 400, reason="malformed request")
    return deny_response(decision_id, 400, body="malformed request")

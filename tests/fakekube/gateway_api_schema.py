"""JSON schemas for the Gateway API objects we generate or ship (Gateway, GatewayClass).

kubernetes-validate only knows built-in kinds. These schemas transcribe, by hand, the parts of
the Gateway API v1 CRDs' openAPIV3Schema that our objects use: required fields, types, bounds
and name patterns. They are a subset (CEL rules and the fields we never set are left out).
"""

from __future__ import annotations

from typing import Any

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
GROUP = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KIND = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
CONTROLLER_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"
PROTOCOL = (
    r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?"
    r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$"
)


def _string(
    pattern: str | None = None, max_length: int = 253, min_length: int = 1
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length, "minLength": min_length}
    if pattern:
        schema["pattern"] = pattern
    return schema


def _metadata(namespaced: bool) -> dict[str, Any]:
    required = ["name", "namespace"] if namespaced else ["name"]
    properties: dict[str, Any] = {
        "name": _string(DNS_SUBDOMAIN),
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    }
    if namespaced:
        properties["namespace"] = _string(DNS_SUBDOMAIN, 63)
    return {"type": "object", "required": required, "properties": properties}


def _object(kind: str, namespaced: bool, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
            "kind": {"const": kind},
            "metadata": _metadata(namespaced),
            "spec": spec,
        },
    }


LISTENER = {
    "type": "object",
    "required": ["name", "port", "protocol"],
    "additionalProperties": False,
    "properties": {
        "name": _string(DNS_SUBDOMAIN),
        "hostname": _string(max_length=253),
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "protocol": _string(PROTOCOL, 255),
        "allowedRoutes": {"type": "object"},
        "tls": {"type": "object"},
    },
}

GATEWAY = _object(
    "Gateway",
    True,
    {
        "type": "object",
        "required": ["gatewayClassName", "listeners"],
        "additionalProperties": False,
        "properties": {
            "gatewayClassName": _string(),
            "listeners": {"type": "array", "minItems": 1, "maxItems": 64, "items": LISTENER},
            "addresses": {"type": "array", "maxItems": 16},
            "infrastructure": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "labels": {"type": "object", "maxProperties": 8},
                    "annotations": {"type": "object", "maxProperties": 8},
                    "parametersRef": {
                        "type": "object",
                        "required": ["group", "kind", "name"],
                        "additionalProperties": False,
                        "properties": {
                            "group": _string(GROUP, min_length=0),
                            "kind": _string(KIND, 63),
                            "name": _string(),
                        },
                    },
                },
            },
        },
    },
)

GATEWAY_CLASS = _object(
    "GatewayClass",
    False,
    {
        "type": "object",
        "required": ["controllerName"],
        "additionalProperties": False,
        "properties": {
            "controllerName": _string(CONTROLLER_NAME),
            "description": {"type": "string", "maxLength": 64},
            "parametersRef": {
                "type": "object",
                "required": ["group", "kind", "name"],
                "additionalProperties": False,
                "properties": {
                    "group": _string(GROUP, min_length=0),
                    "kind": _string(KIND, 63),
                    "name": _string(),
                    "namespace": _string(DNS_SUBDOMAIN, 63),
                },
            },
        },
    },
)

SCHEMAS = {"Gateway": GATEWAY, "GatewayClass": GATEWAY_CLASS}

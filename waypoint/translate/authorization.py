"""Istio ``AuthorizationPolicy`` (``security.istio.io`` v1 and v1beta1) → ``model.AuthorizationPolicy``.

Field by field as istio/api ``security/v1beta1/authorization.proto`` defines it and as
istiod's ``pilot/pkg/security/authz/model`` reads it: ``from.source`` (principals,
requestPrincipals, namespaces, serviceAccounts, ipBlocks and their ``not*``),
``to.operation`` (hosts, ports, methods, paths and their ``not*``) and ``when`` with the
documented keys. What a waypoint cannot enforce exactly (``remoteIpBlocks``,
``connection.sni``, ``experimental.*``, a ``selector``) is refused with the field named,
never dropped: a dropped condition would make an ALLOW policy wider or a DENY policy
narrower than written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from waypoint import model
from waypoint.translate import fields

DRY_RUN_ANNOTATION = "istio.io/dry-run"
# Istio's root namespace: only a policy here may target the GatewayClass (mesh-wide).
ROOT_NAMESPACE = "istio-system"
# The CUSTOM action's provider that is this project's extauthz sidecar.
EXTAUTHZ_PROVIDER = "waypoint-extauthz"

_SOURCE_FIELDS = {
    "principals": model.AuthzKey.SOURCE_PRINCIPAL,
    "requestPrincipals": model.AuthzKey.REQUEST_PRINCIPAL,
    "namespaces": model.AuthzKey.SOURCE_NAMESPACE,
    "serviceAccounts": model.AuthzKey.SOURCE_PRINCIPAL,
    "ipBlocks": model.AuthzKey.SOURCE_IP,
}
_UNSUPPORTED_SOURCE = ("remoteIpBlocks", "notRemoteIpBlocks")
_OPERATION_FIELDS = {
    "hosts": model.AuthzKey.HOST,
    "ports": model.AuthzKey.DESTINATION_PORT,
    "methods": model.AuthzKey.METHOD,
    "paths": model.AuthzKey.PATH,
}
_WHEN_KEYS = {
    "source.ip": model.AuthzKey.SOURCE_IP,
    "source.namespace": model.AuthzKey.SOURCE_NAMESPACE,
    "source.principal": model.AuthzKey.SOURCE_PRINCIPAL,
    "request.auth.principal": model.AuthzKey.REQUEST_PRINCIPAL,
    "request.auth.audiences": model.AuthzKey.REQUEST_AUDIENCES,
    "request.auth.presenter": model.AuthzKey.REQUEST_PRESENTER,
    "destination.ip": model.AuthzKey.DESTINATION_IP,
    "destination.port": model.AuthzKey.DESTINATION_PORT,
}
_BRACKETS = re.compile(r"\[([^\[\]]+)\]")
_NAMESPACE = re.compile(r"^[a-z0-9*]([-a-z0-9*]*[a-z0-9*])?$")
_SERVICE_ACCOUNT = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_TEMPLATE = re.compile(r"\{[^}]*\}")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def read(
    namespace: str, name: str, annotations: Mapping[str, Any], spec: Mapping[str, Any]
) -> model.AuthorizationPolicy:
    """Validate one policy's spec; raises ``fields.Bad`` naming the offending field."""
    _known(spec, "spec", {"targetRefs", "targetRef", "selector", "action", "provider", "rules"})
    if spec.get("selector") is not None:
        raise fields.Bad("spec.selector: waypoints take AuthorizationPolicy by targetRefs only")
    action = _action(spec.get("action"))
    provider = _provider(spec.get("provider"), action)
    rules = tuple(
        _rule(raw, f"spec.rules[{i}]")
        for i, raw in enumerate(fields.seq(spec.get("rules"), "spec.rules"))
    )
    trial = dry_run(annotations)
    if trial and action is model.AuthzAction.CUSTOM:
        # A CUSTOM policy's check is the extauthz call itself: there is nothing to shadow.
        raise fields.Bad(
            f"metadata.annotations[{DRY_RUN_ANNOTATION}] is not supported with action CUSTOM"
        )
    return model.AuthorizationPolicy(
        namespace=namespace,
        name=name,
        action=action,
        rules=rules,
        dry_run=trial,
        provider=provider,
    )


def dry_run(annotations: Mapping[str, Any]) -> bool:
    value = annotations.get(DRY_RUN_ANNOTATION)
    if value is None:
        return False
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise fields.Bad(
        f"metadata.annotations[{DRY_RUN_ANNOTATION}] must be true or false, not {value!r}"
    )


def _known(item: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    for key in item:
        if key not in allowed:
            raise fields.Bad(
                f"{path}.{key} is not a known or supported field "
                f"(expected {', '.join(sorted(allowed))})"
            )


def _action(raw: Any) -> model.AuthzAction:
    if raw is None:
        return model.AuthzAction.ALLOW
    options = [a.value for a in model.AuthzAction]
    if raw not in options:
        raise fields.Bad(f"spec.action must be one of {', '.join(options)}, not {raw!r}")
    return model.AuthzAction(raw)


def _provider(raw: Any, action: model.AuthzAction) -> str | None:
    if action is not model.AuthzAction.CUSTOM:
        if raw is not None:
            raise fields.Bad("spec.provider is only for action CUSTOM")
        return None
    item = fields.mapping(raw, "spec.provider", required=True)
    _known(item, "spec.provider", {"name"})
    name = fields.nonempty(item.get("name"), "spec.provider.name")
    if name != EXTAUTHZ_PROVIDER:
        raise fields.Bad(
            f"spec.provider.name {name!r} is not a known provider (this waypoint has "
            f"{EXTAUTHZ_PROVIDER!r}, its extauthz sidecar)"
        )
    return name


def _rule(raw: Any, path: str) -> model.AuthzRule:
    item = fields.mapping(raw, path, required=True)
    _known(item, path, {"from", "to", "when"})
    sources = tuple(
        _source(entry, f"{path}.from[{i}]")
        for i, entry in enumerate(fields.seq(item.get("from"), f"{path}.from"))
    )
    operations = tuple(
        _operation(entry, f"{path}.to[{i}]")
        for i, entry in enumerate(fields.seq(item.get("to"), f"{path}.to"))
    )
    when = tuple(
        _when(entry, f"{path}.when[{i}]")
        for i, entry in enumerate(fields.seq(item.get("when"), f"{path}.when"))
    )
    return model.AuthzRule(sources=sources, operations=operations, when=when)


def _entry(raw: Any, path: str, inner: str) -> tuple[Mapping[str, Any], str]:
    item = fields.mapping(raw, path, required=True)
    _known(item, path, {inner})
    body = fields.mapping(item.get(inner), f"{path}.{inner}", required=True)
    if not body:
        # Istio's validation: an empty source or operation is an error, not "anything".
        raise fields.Bad(f"{path}.{inner} must set at least one field")
    return body, f"{path}.{inner}"


def _source(raw: Any, path: str) -> tuple[model.AuthzCondition, ...]:
    source, path = _entry(raw, path, "source")
    for name in _UNSUPPORTED_SOURCE:
        if name in source:
            raise fields.Bad(
                f"{path}.{name} is not supported on a waypoint: the client address is not "
                "taken from X-Forwarded-For or PROXY protocol here; use ipBlocks"
            )
    allowed = set(_SOURCE_FIELDS) | {"not" + n[0].upper() + n[1:] for n in _SOURCE_FIELDS}
    _known(source, path, allowed)
    out = []
    for name, key in _SOURCE_FIELDS.items():
        condition = _pair(source, name, key, path)
        if condition is not None:
            if name == "serviceAccounts":
                condition = _service_accounts(condition, path)
            out.append(condition)
    return tuple(out)


def _operation(raw: Any, path: str) -> tuple[model.AuthzCondition, ...]:
    operation, path = _entry(raw, path, "operation")
    allowed = set(_OPERATION_FIELDS) | {"not" + n[0].upper() + n[1:] for n in _OPERATION_FIELDS}
    _known(operation, path, allowed)
    out = []
    for name, key in _OPERATION_FIELDS.items():
        condition = _pair(operation, name, key, path)
        if condition is not None:
            out.append(condition)
    return tuple(out)


def _pair(
    item: Mapping[str, Any], name: str, key: model.AuthzKey, path: str
) -> model.AuthzCondition | None:
    negated = "not" + name[0].upper() + name[1:]
    values = _values(item.get(name), f"{path}.{name}", key)
    not_values = _values(item.get(negated), f"{path}.{negated}", key)
    if not values and not not_values:
        return None
    return model.AuthzCondition(key=key, values=values, not_values=not_values)


def _when(raw: Any, path: str) -> model.AuthzCondition:
    item = fields.mapping(raw, path, required=True)
    _known(item, path, {"key", "values", "notValues"})
    text = fields.nonempty(item.get("key"), f"{path}.key")
    key, name = _when_key(text, f"{path}.key")
    values = _values(item.get("values"), f"{path}.values", key)
    not_values = _values(item.get("notValues"), f"{path}.notValues", key)
    if not values and not not_values:
        raise fields.Bad(f"{path} needs values or notValues for key {text!r}")
    return model.AuthzCondition(key=key, values=values, not_values=not_values, name=name)


def _when_key(text: str, path: str) -> tuple[model.AuthzKey, tuple[str, ...]]:
    if text in _WHEN_KEYS:
        return _WHEN_KEYS[text], ()
    for prefix, key in (
        ("request.headers", model.AuthzKey.REQUEST_HEADER),
        ("request.auth.claims", model.AuthzKey.REQUEST_CLAIM),
    ):
        if text.startswith(prefix + "["):
            rest = text[len(prefix) :]
            names = tuple(_BRACKETS.findall(rest))
            if not names or "".join(f"[{n}]" for n in names) != rest:
                raise fields.Bad(f"{path} {text!r} must be {prefix}[name]")
            if key is model.AuthzKey.REQUEST_HEADER:
                if len(names) != 1 or not _HEADER.match(names[0]):
                    raise fields.Bad(f"{path} {text!r} must name one valid header")
                return key, (names[0].lower(),)
            return key, names
    supported = sorted([*_WHEN_KEYS, "request.headers[...]", "request.auth.claims[...]"])
    raise fields.Bad(f"{path} {text!r} is not a supported key (supported: {', '.join(supported)})")


def _values(raw: Any, path: str, key: model.AuthzKey) -> tuple[str, ...]:
    out = []
    for i, value in enumerate(fields.seq(raw, path)):
        where = f"{path}[{i}]"
        text = str(value) if key is model.AuthzKey.DESTINATION_PORT and _is_int(value) else value
        text = fields.nonempty(text, where)
        _check(key, text, where)
        out.append(text)
    return tuple(out)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(key: model.AuthzKey, value: str, path: str) -> None:
    """Istio's validation of one value, so a bad one is refused here, not in Envoy."""
    if key is model.AuthzKey.DESTINATION_PORT:
        if not value.isdigit() or not 0 <= int(value) <= 65535:
            raise fields.Bad(f"{path} {value!r} must be a port number from 0 to 65535")
    elif key in (model.AuthzKey.SOURCE_IP, model.AuthzKey.DESTINATION_IP):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise fields.Bad(f"{path} {value!r} must be an IP address or CIDR") from None
    elif key is model.AuthzKey.SOURCE_NAMESPACE:
        if not _NAMESPACE.match(value):
            raise fields.Bad(f"{path} {value!r} is not a namespace name")
    elif key is model.AuthzKey.PATH:
        _check_path(value, path)
    elif key is model.AuthzKey.SOURCE_PRINCIPAL and value.startswith("spiffe://"):
        # Istio prepends spiffe:// itself; with it written out the value could never match.
        raise fields.Bad(f"{path} {value!r}: write principals without spiffe://")


def _check_path(value: str, path: str) -> None:
    if not _TEMPLATE.search(value):
        return  # as in Istio, '*' is special only as the whole value, a prefix or a suffix
    # Templates (Istio 1.22+, pkg/config/security CheckValidPathTemplate): operators are whole
    # segments, {*} (one segment) or {**} (any number), and no operator follows {**}.
    segments = value.split("/")
    if segments[0] != "":
        raise fields.Bad(f"{path} {value!r}: a path template must start with /")
    seen_any = False
    for segment in segments[1:]:
        if "{" in segment or "}" in segment or "*" in segment:
            if segment not in ("{*}", "{**}"):
                raise fields.Bad(
                    f"{path} {value!r}: a template operator must be a whole segment, "
                    "{*} or {**}"
                )
            if seen_any:
                raise fields.Bad(f"{path} {value!r}: {{**}} must be the last operator")
            seen_any = segment == "{**}"


def _service_accounts(condition: model.AuthzCondition, path: str) -> model.AuthzCondition:
    """``serviceAccounts`` entries are ``[namespace/]name``; checked, kept as a marker name."""
    for value in (*condition.values, *condition.not_values):
        if not _SERVICE_ACCOUNT.match(value):
            raise fields.Bad(f"{path}.serviceAccounts {value!r} must be [namespace/]name")
    return model.AuthzCondition(
        key=condition.key,
        values=condition.values,
        not_values=condition.not_values,
        name=("serviceAccounts",),
    )

"""Istio AuthorizationPolicies → Envoy RBAC filters, one per action, as istiod builds them.

Following ``pilot/pkg/security/authz/builder/builder.go`` and ``model/generator.go``
(istio/istio): each action gets its own filter (AUDIT = RBAC ``LOG``, then DENY, then
ALLOW); each rule of each policy is one RBAC policy named ``ns[<ns>]-policy[<name>]-rule[<i>]``
whose permissions are its ``to`` entries and whose principals are its ``from`` entries, both
AND-ed with ``when``. A policy without rules becomes a policy that matches nothing, so an
ALLOW policy with no rules denies everything. Dry-run policies go to ``shadow_rules``:
evaluated and counted, never enforced.

Where a waypoint differs from a sidecar:

- The client's SPIFFE ID and address live in filter state (set on the HBONE stream, shared
  with the internal listener), so principals, namespaces and ipBlocks match with RBAC's
  ``filter_state`` principal, not ``authenticated``/``direct_remote_ip``.
- An internal listener has no real destination address: ``destination.port`` and
  ``destination.ip`` are decided here from the destination, as istiod does for ambient
  waypoints (``AmbientDestinationPortAdapations``).
- Request principals and claims come from ``jwt_authn``'s verified payload in dynamic
  metadata (istiod's "extended JWT" form).

CUSTOM policies are ``waypoint.envoy.custom``'s, built on ``rules`` here; their filters come
before these.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import address_pb2 as address_matcher_pb2
from envoy.type.matcher.v3 import (
    filter_state_pb2,
    metadata_pb2,
    path_pb2,
    regex_pb2,
    string_pb2,
    value_pb2,
)
from xds.core.v3 import cidr_pb2

from waypoint import model, names
from waypoint.envoy import filters, jwt_authn, protos
from waypoint.envoy import options as options_mod

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
URI_TEMPLATE = "envoy.path.match.uri_template.uri_template_matcher"
# Per action: the filter name, RBAC action, and stat prefixes of enforced and dry-run rules.
# Envoy writes the matched policy to dynamic metadata (namespace envoy.filters.http.rbac)
# under "<prefix>enforced_effective_policy_id" / "<shadow prefix>shadow_effective_policy_id".
_ACTIONS = {
    model.AuthzAction.AUDIT: (
        HTTP_RBAC + ".audit",
        rbac_pb2.RBAC.LOG,
        "audit_",
        "dry_run_audit_",
    ),
    model.AuthzAction.DENY: (HTTP_RBAC + ".deny", rbac_pb2.RBAC.DENY, "deny_", "dry_run_deny_"),
    model.AuthzAction.ALLOW: (
        HTTP_RBAC + ".allow",
        rbac_pb2.RBAC.ALLOW,
        "allow_",
        "dry_run_allow_",
    ),
}
CUSTOM_POLICY_PREFIX = "istio-ext-authz-"
_MATCH_ANY = "^.+$"


# --- names -----------------------------------------------------------------------------------


def policy_name(policy: model.AuthorizationPolicy, rule: int) -> str:
    prefix = CUSTOM_POLICY_PREFIX if policy.action is model.AuthzAction.CUSTOM else ""
    return f"{prefix}ns[{policy.namespace}]-policy[{policy.name}]-rule[{rule}]"


# --- string matchers (Istio's matcher package) -------------------------------------------


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def _istio_string(value: str, ignore_case: bool = False) -> string_pb2.StringMatcher:
    """``*`` = present, ``*x`` = suffix, ``x*`` = prefix, else exact."""
    if value == "*":
        return _regex(_MATCH_ANY)
    if value.startswith("*"):
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=value[:-1], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=value, ignore_case=ignore_case)


def _escape(text: str) -> str:
    """RE2 escaping of a literal."""
    return "".join("\\" + c if not (c.isalnum() or c in "_-/:") else c for c in text)


# --- principals ------------------------------------------------------------------------------


def _filter_state(matcher: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(
        filter_state=filter_state_pb2.FilterStateMatcher(
            key=filters.SOURCE_PRINCIPAL_KEY, string_match=matcher
        )
    )


def _source_principal(
    value: str, condition: model.AuthzCondition, namespace: str
) -> rbac_pb2.Principal:
    if condition.name == ("serviceAccounts",):
        ns, _, account = value.rpartition("/")
        ns = ns or namespace
        return _filter_state(
            _regex(f"^spiffe://[^/]+/ns/{_escape(ns)}/(.+/|)sa/{_escape(account)}(/.+)?$")
        )
    if value == "*":
        return _filter_state(_regex(_MATCH_ANY))
    if value.startswith("*"):
        return _filter_state(string_pb2.StringMatcher(suffix=value[1:]))
    return _filter_state(_istio_string("spiffe://" + value))


def _source_namespace(value: str) -> rbac_pb2.Principal:
    pattern = _escape(value).replace("\\*", ".*").replace("*", ".*")
    return _filter_state(_regex(f"^spiffe://[^/]+/ns/{pattern}/.*$"))


def _cidr(value: str) -> rbac_pb2.Principal:
    network = ipaddress.ip_network(value, strict=False)
    return rbac_pb2.Principal(
        filter_state=filter_state_pb2.FilterStateMatcher(
            key=filters.SOURCE_ADDRESS_KEY,
            address_match=address_matcher_pb2.AddressMatcher(ranges=[_range(network)]),
        )
    )


def _range(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> cidr_pb2.CidrRange:
    return cidr_pb2.CidrRange(
        address_prefix=str(network.network_address), prefix_len=protos.uint32(network.prefixlen)
    )


def _jwt_metadata(path: Sequence[str], value: value_pb2.ValueMatcher) -> rbac_pb2.Principal:
    segments = [
        metadata_pb2.MetadataMatcher.PathSegment(key=key) for key in (jwt_authn.PAYLOAD_KEY, *path)
    ]
    matcher = metadata_pb2.MetadataMatcher(filter=jwt_authn.FILTER, path=segments, value=value)
    return rbac_pb2.Principal(
        sourced_metadata=rbac_pb2.SourcedMetadata(
            metadata_matcher=matcher, metadata_source=rbac_pb2.MetadataSource.DYNAMIC
        )
    )


def _claim_string(path: Sequence[str], matcher: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    return _jwt_metadata(path, value_pb2.ValueMatcher(string_match=matcher))


def _request_principal(value: str) -> rbac_pb2.Principal:
    """``iss/sub`` split at the last ``/`` (issuers are URLs), as istiod's extended JWT."""
    idx = value.rfind("/")
    found = idx >= 0
    iss, sub = (value[:idx], value[idx + 1 :]) if found else (value, "")
    any_ = _regex(_MATCH_ANY)
    if value == "*":
        match_iss, match_sub = any_, any_
    elif value.startswith("*"):
        if found:
            match_iss = any_ if iss == "*" else string_pb2.StringMatcher(suffix=iss[1:])
            match_sub = string_pb2.StringMatcher(exact=sub)
        else:
            match_iss, match_sub = any_, string_pb2.StringMatcher(suffix=value[1:])
    elif value.endswith("*"):
        if found:
            match_iss = string_pb2.StringMatcher(exact=iss)
            match_sub = any_ if sub == "*" else string_pb2.StringMatcher(prefix=sub[:-1])
        else:
            match_iss, match_sub = string_pb2.StringMatcher(prefix=value[:-1]), any_
    else:
        match_iss = string_pb2.StringMatcher(exact=iss)
        match_sub = string_pb2.StringMatcher(exact=sub)
    return _and_ids([_claim_string(["iss"], match_iss), _claim_string(["sub"], match_sub)])


def _claim_values(path: Sequence[str], values: Sequence[str]) -> rbac_pb2.Principal:
    """A claim equal to one of ``values``, or a list claim with one element that is."""
    each = _any_value([value_pb2.ValueMatcher(string_match=_istio_string(v)) for v in values])
    as_list = value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=each))
    return _jwt_metadata(path, _any_value([as_list, each]))


def _any_value(matchers: list[value_pb2.ValueMatcher]) -> value_pb2.ValueMatcher:
    """One of ``matchers`` (Envoy's OrMatcher wants two or more)."""
    if len(matchers) == 1:
        return matchers[0]
    return value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=matchers))


def _header_principal(name: str, value: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(header=_header(name, value))


def _header(name: str, value: str, ignore_case: bool = False) -> rc_pb2.HeaderMatcher:
    if value == "*":
        return rc_pb2.HeaderMatcher(name=name, present_match=True)
    return rc_pb2.HeaderMatcher(name=name, string_match=_istio_string(value, ignore_case))


def _and_ids(ids: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=ids))


def _or_ids(ids: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    return ids[0] if len(ids) == 1 else rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def _principal_values(
    condition: model.AuthzCondition, values: Sequence[str], namespace: str
) -> rbac_pb2.Principal:
    key = condition.key
    if key is model.AuthzKey.SOURCE_PRINCIPAL:
        return _or_ids([_source_principal(v, condition, namespace) for v in values])
    if key is model.AuthzKey.SOURCE_NAMESPACE:
        return _or_ids([_source_namespace(v) for v in values])
    if key is model.AuthzKey.SOURCE_IP:
        return _or_ids([_cidr(v) for v in values])
    if key is model.AuthzKey.REQUEST_PRINCIPAL:
        return _or_ids([_request_principal(v) for v in values])
    if key is model.AuthzKey.REQUEST_AUDIENCES:
        return _claim_values(["aud"], values)
    if key is model.AuthzKey.REQUEST_PRESENTER:
        return _claim_values(["azp"], values)
    if key is model.AuthzKey.REQUEST_CLAIM:
        return _claim_values(condition.name, values)
    if key is model.AuthzKey.REQUEST_HEADER:
        return _or_ids([_header_principal(condition.name[0], v) for v in values])
    raise ValueError(f"{key.value} is not a principal attribute")


def _principal(conditions: Iterable[model.AuthzCondition], namespace: str) -> rbac_pb2.Principal:
    parts: list[rbac_pb2.Principal] = []
    for condition in conditions:
        if condition.values:
            parts.append(_principal_values(condition, condition.values, namespace))
        if condition.not_values:
            negated = _principal_values(condition, condition.not_values, namespace)
            parts.append(rbac_pb2.Principal(not_id=negated))
    return _and_ids(parts or [rbac_pb2.Principal(any=True)])


# --- permissions -----------------------------------------------------------------------------

_NEVER = rbac_pb2.Permission(not_rule=rbac_pb2.Permission(any=True))


def _path(value: str) -> rbac_pb2.Permission:
    if "{" in value:
        template = value.replace("{**}", "**").replace("{*}", "*")
        config = uri_template_match_pb2.UriTemplateMatchConfig(path_template=template)
        return rbac_pb2.Permission(uri_template=protos.extension(URI_TEMPLATE, config))
    matcher = _regex(_MATCH_ANY) if value == "*" else _istio_string(value)
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=matcher))


def _static(decided: bool) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(any=True) if decided else _NEVER


def _destination_ip(value: str, destination: model.Destination) -> bool:
    network = ipaddress.ip_network(value, strict=False)
    return any(ipaddress.ip_address(a) in network for a in destination.addresses if names.is_ip(a))


def _permission_values(
    condition: model.AuthzCondition, values: Sequence[str], destination: model.Destination
) -> rbac_pb2.Permission:
    key = condition.key
    if key is model.AuthzKey.DESTINATION_PORT:
        return _static(str(destination.port) in values)
    if key is model.AuthzKey.DESTINATION_IP:
        return _static(any(_destination_ip(v, destination) for v in values))
    if key is model.AuthzKey.HOST:
        items = [rbac_pb2.Permission(header=_header(":authority", v, True)) for v in values]
    elif key is model.AuthzKey.METHOD:
        items = [rbac_pb2.Permission(header=_header(":method", v)) for v in values]
    elif key is model.AuthzKey.PATH:
        items = [_path(v) for v in values]
    else:
        raise ValueError(f"{key.value} is not a permission attribute")
    if len(items) == 1:
        return items[0]
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=items))


def _permission(
    conditions: Iterable[model.AuthzCondition], destination: model.Destination
) -> rbac_pb2.Permission:
    parts: list[rbac_pb2.Permission] = []
    for condition in conditions:
        if condition.values:
            parts.append(_permission_values(condition, condition.values, destination))
        if condition.not_values:
            negated = _permission_values(condition, condition.not_values, destination)
            parts.append(rbac_pb2.Permission(not_rule=negated))
    parts = parts or [rbac_pb2.Permission(any=True)]
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=parts))


_PERMISSION_KEYS = frozenset(
    {
        model.AuthzKey.HOST,
        model.AuthzKey.METHOD,
        model.AuthzKey.PATH,
        model.AuthzKey.DESTINATION_PORT,
        model.AuthzKey.DESTINATION_IP,
    }
)


# --- rules -----------------------------------------------------------------------------------


def _for_tcp(
    conditions: Sequence[model.AuthzCondition], action: model.AuthzAction
) -> tuple[model.AuthzCondition, ...] | None:
    """Conditions a TCP connection can be judged on, as istiod does: an ALLOW rule with an
    HTTP-only attribute is dropped (allow less); a DENY or AUDIT rule ignores that attribute
    (deny more). None drops the rule."""
    http_only = [c for c in conditions if c.key.http_only]
    if not http_only:
        return tuple(conditions)
    if action is model.AuthzAction.ALLOW:
        return None
    return tuple(c for c in conditions if not c.key.http_only)


def rule_policy(
    policy: model.AuthorizationPolicy,
    rule: model.AuthzRule,
    destination: model.Destination,
    tcp: bool = False,
) -> rbac_pb2.Policy | None:
    """One rule as an RBAC policy; None when the rule cannot apply to a TCP connection."""
    when_perm = [c for c in rule.when if c.key in _PERMISSION_KEYS]
    when_prin = [c for c in rule.when if c.key not in _PERMISSION_KEYS]
    operations = [(*op, *when_perm) for op in rule.operations] or [tuple(when_perm)]
    sources = [(*src, *when_prin) for src in rule.sources] or [tuple(when_prin)]
    if tcp:
        kept_ops = [_for_tcp(op, policy.action) for op in operations]
        kept_srcs = [_for_tcp(src, policy.action) for src in sources]
        if any(op is None for op in kept_ops) or any(s is None for s in kept_srcs):
            return None
        operations = [op for op in kept_ops if op is not None]
        sources = [s for s in kept_srcs if s is not None]
    return rbac_pb2.Policy(
        permissions=[_permission(op, destination) for op in operations],
        principals=[_principal(src, policy.namespace) for src in sources],
    )


_MATCH_NEVER = rbac_pb2.Policy(
    permissions=[_NEVER],
    principals=[rbac_pb2.Principal(not_id=rbac_pb2.Principal(any=True))],
)


def rules(
    policies: Sequence[model.AuthorizationPolicy],
    action: rbac_pb2.RBAC.Action.ValueType,
    destination: model.Destination,
    tcp: bool,
) -> rbac_pb2.RBAC:
    """The RBAC rules of ``policies`` at this destination: one RBAC policy per rule."""
    out = rbac_pb2.RBAC(action=action)
    for policy in policies:
        if not policy.rules:
            out.policies[policy_name(policy, 0)].CopyFrom(_MATCH_NEVER)
        for i, rule in enumerate(policy.rules):
            built = rule_policy(policy, rule, destination, tcp)
            if built is not None:
                out.policies[policy_name(policy, i)].CopyFrom(built)
    return out


def _split(
    destination: model.Destination, action: model.AuthzAction
) -> tuple[list[model.AuthorizationPolicy], list[model.AuthorizationPolicy]]:
    mine = [p for p in destination.authorization if p.action is action]
    return [p for p in mine if not p.dry_run], [p for p in mine if p.dry_run]


# --- filters ---------------------------------------------------------------------------------


def http_filters(
    destination: model.Destination, _providers: Sequence[model.JwtProvider]
) -> list[hcm_pb2.HttpFilter]:
    """The AUDIT, DENY and ALLOW RBAC filters, in that order (CUSTOM's come before).

    With ``patch_route`` and ``clusters``, the hook of ``waypoint.envoy.policies``.
    """
    out: list[hcm_pb2.HttpFilter] = []
    for action, (name, rbac_action, prefix, shadow_prefix) in _ACTIONS.items():
        enforced, dry = _split(destination, action)
        if not enforced and not dry:
            continue
        config = http_rbac_pb2.RBAC(rules_stat_prefix=prefix)
        if enforced:
            config.rules.CopyFrom(rules(enforced, rbac_action, destination, tcp=False))
        if dry:
            config.shadow_rules.CopyFrom(rules(dry, rbac_action, destination, tcp=False))
            config.shadow_rules_stat_prefix = shadow_prefix
        out.append(hcm_pb2.HttpFilter(name=name, typed_config=protos.pack(config)))
    return out


def patch_route(
    _out: rc_pb2.Route, _policy: model.RoutePolicy | None, _destination: model.Destination
) -> None:
    """Nothing per route: the rules match on the request itself."""


def clusters(
    _waypoint: model.Waypoint, _options: options_mod.BootstrapOptions
) -> list[cluster_pb2.Cluster]:
    """None: RBAC decides inside Envoy."""
    return []


def network_filters(
    destination: model.Destination, listener: str
) -> list[listener_components_pb2.Filter]:
    """The same decisions for a TCP destination, on the attributes a connection has."""
    out = []
    for action, (name, rbac_action, prefix, shadow_prefix) in _ACTIONS.items():
        enforced, dry = _split(destination, action)
        if not enforced and not dry:
            continue
        config = net_rbac_pb2.RBAC(stat_prefix=f"{filters.stat_prefix(listener)}.{prefix}")
        if enforced:
            config.rules.CopyFrom(rules(enforced, rbac_action, destination, tcp=True))
        if dry:
            config.shadow_rules.CopyFrom(rules(dry, rbac_action, destination, tcp=True))
            config.shadow_rules_stat_prefix = shadow_prefix
        network_name = NETWORK_RBAC + name[len(HTTP_RBAC) :]
        out.append(
            listener_components_pb2.Filter(name=network_name, typed_config=protos.pack(config))
        )
    return out


def uses_source_address(waypoint: model.Waypoint) -> bool:
    """True when some policy matches on the client's IP (ipBlocks or source.ip)."""
    return any(
        c.key is model.AuthzKey.SOURCE_IP
        for d in waypoint.destinations
        for p in d.authorization
        for r in p.rules
        for c in (*(c for s in r.sources for c in s), *r.when)
    )

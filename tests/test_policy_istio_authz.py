"""Istio AuthorizationPolicy in isolation: parsing (every refusal names its field), status
through translation, and the RBAC builder's Istio-specific decisions (empty specs, TCP,
destination port, request principals)."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import pytest
import yaml

from waypoint import model, translate
from waypoint.commands import explain
from waypoint.envoy import bootstrap, custom, options, protos, rbac, source_principal
from waypoint.translate import authorization, fields, policyspecs
from waypoint.translate import policies as attach

TD = "cluster.local"
SERVICE = {"group": "", "kind": "Service", "name": "orders"}


def _raw(spec: dict[str, Any], namespace: str = "ns1", **meta: Any) -> dict[str, Any]:
    body = {"targetRefs": [SERVICE], **spec}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": namespace, **meta},
        "spec": body,
    }


def _read(spec: dict[str, Any], **meta: Any) -> model.AuthorizationPolicy:
    found = policyspecs.read(attach.policy_object(_raw(spec, **meta))).body
    assert isinstance(found, model.AuthorizationPolicy)
    return found


def _rule(**parts: Any) -> dict[str, Any]:
    return {"rules": [parts]}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"action": "REJECT"}, "spec.action"),
        ({"selector": {"matchLabels": {"app": "x"}}}, "spec.selector"),
        ({"action": "ALLOW", "provider": {"name": "x"}}, "spec.provider"),
        ({"action": "CUSTOM"}, "spec.provider"),
        ({"action": "CUSTOM", "provider": {"name": "opa"}}, "spec.provider.name"),
        (_rule(source=[]), "spec.rules[0].source"),
        (_rule(**{"from": [{}]}), "spec.rules[0].from[0].source"),
        (_rule(**{"from": [{"source": {}}]}), "spec.rules[0].from[0].source"),
        (
            _rule(**{"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"]}}]}),
            "spec.rules[0].from[0].source.remoteIpBlocks",
        ),
        (
            _rule(**{"from": [{"source": {"ipBlocks": ["1.2.3.400"]}}]}),
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        (
            _rule(**{"from": [{"source": {"namespaces": ["Bad_NS"]}}]}),
            "spec.rules[0].from[0].source.namespaces[0]",
        ),
        (
            _rule(**{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/a/sa/b"]}}]}),
            "spec.rules[0].from[0].source.principals[0]",
        ),
        (
            _rule(to=[{"operation": {"ports": ["http"]}}]),
            "spec.rules[0].to[0].operation.ports[0]",
        ),
        (
            _rule(to=[{"operation": {"paths": ["/a/{*}x"]}}]),
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            _rule(to=[{"operation": {"paths": ["/{**}/a/{*}"]}}]),
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (_rule(to=[{"operation": {"sni": ["x"]}}]), "spec.rules[0].to[0].operation.sni"),
        (_rule(when=[{"key": "connection.sni", "values": ["x"]}]), "spec.rules[0].when[0].key"),
        (_rule(when=[{"key": "remote.ip", "values": ["1.2.3.4"]}]), "spec.rules[0].when[0].key"),
        (_rule(when=[{"key": "source.ip"}]), "spec.rules[0].when[0]"),
        (
            _rule(when=[{"key": "request.headers", "values": ["x"]}]),
            "spec.rules[0].when[0].key",
        ),
        (
            _rule(when=[{"key": "request.headers[a][b]", "values": ["x"]}]),
            "spec.rules[0].when[0].key",
        ),
        (
            _rule(when=[{"key": "destination.port", "values": ["99999"]}]),
            "spec.rules[0].when[0].values[0]",
        ),
        ({"rules": [{"to": [{"operation": {"methods": [""]}}]}]}, "operation.methods[0]"),
    ],
)
def test_errors_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(fields.Bad) as caught:
        _read(spec)
    assert field in str(caught.value)


def test_dry_run_annotation_is_strict() -> None:
    assert _read({}, annotations={"istio.io/dry-run": "true"}).dry_run
    assert not _read({}, annotations={"istio.io/dry-run": "false"}).dry_run
    with pytest.raises(fields.Bad, match=r"istio.io/dry-run"):
        _read({}, annotations={"istio.io/dry-run": "maybe"})
    custom = {"action": "CUSTOM", "provider": {"name": authorization.EXTAUTHZ_PROVIDER}}
    with pytest.raises(fields.Bad, match=r"istio.io/dry-run\] is not supported with action CUSTOM"):
        _read(custom, annotations={"istio.io/dry-run": "true"})


def test_targets() -> None:
    gateway_class = {
        "group": "gateway.networking.k8s.io",
        "kind": "GatewayClass",
        "name": "waypoint",
    }
    raw = _raw({"targetRefs": [gateway_class]})
    with pytest.raises(fields.Bad, match=r"spec.targetRefs\[0\].*root namespace"):
        policyspecs.read(attach.policy_object(raw))
    policyspecs.read(attach.policy_object(_raw({"targetRefs": [gateway_class]}, "istio-system")))
    with_section = {**SERVICE, "sectionName": "http"}
    with pytest.raises(fields.Bad, match=r"spec.targetRefs\[0\].sectionName"):
        policyspecs.read(attach.policy_object(_raw({"targetRefs": [with_section]})))
    route = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}
    with pytest.raises(fields.Bad, match=r"spec.targetRefs\[0\]"):
        policyspecs.read(attach.policy_object(_raw({"targetRefs": [route]})))
    no_targets = _raw({})
    del no_targets["spec"]["targetRefs"]
    with pytest.raises(fields.Bad, match=r"spec\.targetRefs is required"):
        policyspecs.read(attach.policy_object(no_targets))


def test_empty_spec_and_empty_rule_differ() -> None:
    nothing = _read({})
    assert nothing.action is model.AuthzAction.ALLOW
    assert nothing.rules == ()
    everything = _read({"rules": [{}]})
    assert everything.rules == (model.AuthzRule(),)


def test_conditions_keep_istio_shapes() -> None:
    got = _read(
        _rule(
            **{"from": [{"source": {"serviceAccounts": ["sleep", "ops/deployer"]}}]},
            to=[{"operation": {"ports": [8080], "notPaths": ["/a/{**}"]}}],
            when=[{"key": "request.auth.claims[org][team]", "values": ["x"]}],
        )
    )
    rule = got.rules[0]
    assert rule.sources[0][0].name == ("serviceAccounts",)
    assert rule.operations[0][0] == model.AuthzCondition(
        model.AuthzKey.DESTINATION_PORT, values=("8080",)
    )
    assert rule.when[0].name == ("org", "team")


# --- status through translation ----------------------------------------------------------

WORLD = """
apiVersion: v1
kind: Namespace
metadata: {name: ns1, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: ns1}
spec:
  gatewayClassName: waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: ns1}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}, {name: db, port: 5432, appProtocol: tcp}]
---
apiVersion: v1
kind: Service
metadata: {name: outside, namespace: ns1, labels: {istio.io/use-waypoint: none}}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
"""


def _translate(*policies: dict[str, Any]) -> model.Translation:
    return translate.translate([*yaml.safe_load_all(WORLD), *policies], TD)


def _condition(
    translation: model.Translation, name: str, namespace: str = "ns1"
) -> model.Condition:
    for found in translation.statuses:
        ref = found.ref
        if (ref.kind, ref.namespace, ref.name) == ("AuthorizationPolicy", namespace, name):
            return found.conditions[0]
    raise AssertionError(f"no status for {name}")


def test_statuses() -> None:
    def named(name: str, spec: dict[str, Any], namespace: str = "ns1") -> dict[str, Any]:
        raw = _raw(spec, namespace)
        raw["metadata"]["name"] = name
        return raw

    gateway = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
    mesh = {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "waypoint"}
    other_class = {**mesh, "name": "istio"}
    beta = named("v1beta1", {"targetRefs": [gateway]})
    beta["apiVersion"] = "security.istio.io/v1beta1"
    translation = _translate(
        named("ok", {"rules": [{}]}),
        beta,
        named("missing", {"targetRefs": [{**SERVICE, "name": "nope"}]}),
        named("not-served", {"targetRefs": [{**SERVICE, "name": "outside"}]}),
        named("bad", {"action": "DENY", "rules": [{"when": [{"key": "x", "values": ["y"]}]}]}),
        named("mesh", {"targetRefs": [mesh]}, "istio-system"),
        named("other-class", {"targetRefs": [other_class]}, "istio-system"),
    )
    assert _condition(translation, "ok").reason == "Accepted"
    assert _condition(translation, "v1beta1").status
    missing = _condition(translation, "missing")
    assert (missing.status, missing.reason) == (False, "TargetNotFound")
    assert "Service ns1/nope not found" in missing.message
    assert "not served by a waypoint" in _condition(translation, "not-served").message
    bad = _condition(translation, "bad")
    assert (bad.status, bad.reason) == (False, "Invalid")
    assert "spec.rules[0].when[0].key" in bad.message
    assert _condition(translation, "mesh", "istio-system").status
    other = _condition(translation, "other-class", "istio-system")
    assert (other.status, other.reason) == (False, "TargetNotFound")
    waypoint = translation.waypoint("ns1", "waypoint")
    assert waypoint is not None
    for destination in waypoint.destinations:
        names_found = {p.name for p in destination.authorization}
        assert names_found == {"ok", "v1beta1", "mesh"}, destination


# --- the RBAC builder ----------------------------------------------------------------------


def _destination(protocol: model.Protocol = model.Protocol.HTTP) -> model.Destination:
    return model.Destination(
        kind=model.DestinationKind.SERVICE,
        namespace="ns1",
        name="orders",
        port=80,
        addresses=("10.96.0.10",),
        protocol=protocol,
        default_cluster="outbound|80||orders.ns1.svc.cluster.local",
    )


def _rules_of(policy: model.AuthorizationPolicy, tcp: bool = False) -> dict[str, Any]:
    destination = _destination(model.Protocol.TCP if tcp else model.Protocol.HTTP)
    out = {}
    for i, rule in enumerate(policy.rules):
        built = rbac.rule_policy(policy, rule, destination, tcp)
        out[str(i)] = None if built is None else protos.to_dict(built)
    return out


def test_an_allow_rule_with_http_fields_is_dropped_for_tcp_a_deny_rule_widens() -> None:
    spec = _rule(
        **{"from": [{"source": {"namespaces": ["ops"]}}]},
        to=[{"operation": {"methods": ["GET"]}}],
    )
    allow = _read(spec)
    assert _rules_of(allow, tcp=True) == {"0": None}
    deny = _read({"action": "DENY", **spec})
    built = _rules_of(deny, tcp=True)["0"]
    assert built["permissions"] == [{"and_rules": {"rules": [{"any": True}]}}]
    assert "ns/ops" in str(built["principals"])


def test_destination_port_is_decided_for_the_destination() -> None:
    hit = _read(_rule(to=[{"operation": {"ports": ["80"]}}]))
    miss = _read(_rule(to=[{"operation": {"ports": ["81"]}}]))
    assert _rules_of(hit)["0"]["permissions"] == [{"and_rules": {"rules": [{"any": True}]}}]
    assert _rules_of(miss)["0"]["permissions"] == [
        {"and_rules": {"rules": [{"not_rule": {"any": True}}]}}
    ]


def test_request_principals_split_at_the_last_slash() -> None:
    got = str(
        _rules_of(
            _read(_rule(**{"from": [{"source": {"requestPrincipals": ["https://a/b/sub"]}}]}))
        )
    )
    assert "'exact': 'https://a/b'" in got
    assert "'exact': 'sub'" in got


def test_custom_marks_matches_and_enables_ext_authz_on_them() -> None:
    policy = _read(
        {"action": "CUSTOM", "provider": {"name": authorization.EXTAUTHZ_PROVIDER}, "rules": [{}]}
    )
    destination = model.Destination(**{**_destination().__dict__, "authorization": (policy,)})
    header, shadow, check = custom.http_filters(destination, ())
    assert header.name == source_principal.HEADER_MUTATION
    assert shadow.name == "envoy.filters.http.rbac.custom"
    assert check.name == custom.EXT_AUTHZ
    config = protos.to_dict(check)["typed_config"]
    assert config["filter_enabled_metadata"]["path"] == [
        {"key": "ext_authz_shadow_effective_policy_id"}
    ]


# --- waypoint explain ----------------------------------------------------------------------

EXPLAIN_POLICIES = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: ns1}
spec:
  targetRefs: [{group: "", kind: Service, name: orders}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: ns1, annotations: {istio.io/dry-run: "true"}}
spec:
  targetRefs: [{group: "", kind: Service, name: orders}]
  rules: [{from: [{source: {namespaces: [client]}}]}]
"""


def _explain(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str]:
    world = tmp_path / "world.yaml"
    world.write_text(WORLD + EXPLAIN_POLICIES)
    parser = argparse.ArgumentParser(prog="waypoint")
    explain.register(parser.add_subparsers())
    args = parser.parse_args(["explain", "--waypoint", "ns1/waypoint", "-f", str(world), *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def test_explain_names_the_deciding_policy(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _explain(tmp_path, capsys, "--from", "other/app", "http://10.96.0.10/admin/x")
    assert code == 0
    assert "authz: rbac DENY: ns[ns1]-policy[deny-admin]-rule[0] matches" in out
    assert "result: Envoy answers 403 (DENY ns[ns1]-policy[deny-admin]-rule[0])" in out
    code, out = _explain(tmp_path, capsys, "--from", "other/app", "http://10.96.0.10/ok")
    assert "authz: rbac ALLOW (dry run): no policy matches, not enforced" in out
    assert "authz: authorization: allowed" in out
    assert "result: Envoy answers 503" in out  # no endpoints in this world: past authz


# --- junk in every field ---------------------------------------------------------------------

RICH = {
    "action": "DENY",
    "rules": [
        {
            "from": [
                {
                    "source": {
                        "principals": ["cluster.local/ns/a/sa/b", "*"],
                        "notRequestPrincipals": ["https://i/*"],
                        "namespaces": ["a-*"],
                        "serviceAccounts": ["ns/sa"],
                        "ipBlocks": ["10.0.0.0/8"],
                    }
                }
            ],
            "to": [
                {
                    "operation": {
                        "hosts": ["*.example"],
                        "ports": ["80"],
                        "methods": ["GET"],
                        "notPaths": ["/a/{*}/b", "/c/{**}"],
                    }
                }
            ],
            "when": [
                {"key": "request.auth.claims[a][b]", "values": ["x"]},
                {"key": "request.headers[x-y]", "notValues": ["z"]},
                {"key": "destination.ip", "values": ["10.96.0.0/16"]},
            ],
        }
    ],
}
JUNK: tuple[Any, ...] = (None, 0, -1, "", "x", "{**}", "*", [], {}, [None], {"x": 1}, True, 1.5)


def _leaves(value: Any, prefix: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _leaves(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _leaves(item, (*prefix, i))
    return found


def _swap(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _swap(doc[path[0]], path[1:], new)
    return copy


def test_junk_in_any_field_is_a_status_never_an_exception() -> None:
    """Every field replaced by junk: Accepted or Invalid (never an exception), and whatever
    was accepted renders into Envoy config."""
    rendered: set[model.Waypoint] = set()
    outcomes: set[str] = set()
    for path in _leaves(RICH, ()):
        for junk in JUNK:
            spec = _swap(RICH, path, junk) if path else junk
            raw = _raw(spec if isinstance(spec, dict) else {"rules": spec})
            translation = _translate(raw)
            outcomes.add(_condition(translation, "p").reason)
            waypoint = translation.waypoint("ns1", "waypoint")
            assert waypoint is not None
            if waypoint not in rendered:
                bootstrap.build(waypoint, options.BootstrapOptions())
                rendered.add(waypoint)
    assert outcomes == {"Accepted", "Invalid"}

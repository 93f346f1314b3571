"""The policy CRDs: valid Kubernetes objects with structural schemas, which accept every
documented and golden example and reject what the translator rejects.

Objects are judged as the API server judges them (``tests.fakekube.crschema``): pruned,
defaulted and validated, with unknown fields as errors, as ``kubectl apply`` asks for
(``fieldValidation=Strict``)."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import regorus
import yaml

from tests.fakekube import cel, crdrules, crschema
from waypoint import translate
from waypoint.translate import policyspecs

REPO = pathlib.Path(__file__).resolve().parent.parent
CRDS = REPO / "manifests" / "base" / "crds"
DOCS = REPO / "docs" / "policies.md"
GOLDEN = REPO / "tests" / "golden" / "policy"
KINDS = {"ExtAuthzPolicy": "extauthzpolicies", "TrafficPolicy": "trafficpolicies"}


def _crd(kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CRDS / f"{KINDS[kind]}.yaml").read_text())
    return doc


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = _crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _errors(doc: dict[str, Any]) -> list[str]:
    _, unknown, errors = crschema.admit(doc, _schema(doc["kind"]))
    return [f'unknown field "{field}"' for field in unknown] + [str(e) for e in errors]


def _doc_examples() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    return [d for block in blocks for d in yaml.safe_load_all(block) if d]


def _golden_examples() -> list[dict[str, Any]]:
    found = []
    for path in sorted(GOLDEN.glob("*/in.yaml")):
        if path.parent.name != "conflicts":  # that case is invalid on purpose
            found += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def _ours(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") in KINDS]


def test_crds_are_valid_kubernetes_objects() -> None:
    for kind in KINDS:
        kubernetes_validate.validate(_crd(kind), "1.32", strict=True)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crds_pass_the_api_servers_crd_rules(kind: str) -> None:
    """Structural, no properties beside additionalProperties, typed nodes: see crdrules."""
    assert crdrules.check(_crd(kind)) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_cel_rule_is_evaluated_by_the_fake(kind: str) -> None:
    """No rule is beyond cel-python, so the fake API server enforces all of them."""
    rules = list(_rules(_schema(kind)))
    assert rules
    assert [(path, cel.unsupported(rule)) for path, rule in rules if cel.unsupported(rule)] == []


def _rules(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path, rule
    for name, sub in (schema.get("properties") or {}).items():
        yield from _rules(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _rules(schema["items"], f"{path}[]")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unknown_fields_are_pruned_without_strict_validation(kind: str) -> None:
    real = {"timeout": {"request": "1s"}} if kind == "TrafficPolicy" else {}
    doc = _base(kind, surprise=True, **real)
    doc["spec"]["targetRefs"][0]["extra"] = "x"
    admitted, unknown, errors = crschema.admit(doc, _schema(kind))
    assert errors == []
    assert unknown == ["spec.targetRefs[0].extra", "spec.surprise"]
    assert "surprise" not in admitted["spec"]
    assert "extra" not in admitted["spec"]["targetRefs"][0]


def test_documented_and_golden_examples_pass_the_schema_and_the_translator() -> None:
    examples = _ours(_doc_examples()) + _ours(_golden_examples())
    assert len(examples) >= 8
    for doc in examples:
        assert _errors(doc) == [], doc["metadata"]["name"]
        # Raises translate.fields.Bad if the translator disagrees.
        policyspecs.read(translate.policies.policy_object(doc))
    istio = [d for d in _doc_examples() if d.get("kind") == "RequestAuthentication"]
    assert istio
    for doc in istio:
        policyspecs.read(translate.policies.policy_object(doc))


def _base(kind: str, **spec: Any) -> dict[str, Any]:
    target = {"group": "", "kind": "Service", "name": "orders"}
    body = {"decision": "envoy/authz/allow"} if kind == "ExtAuthzPolicy" else {}
    return {
        "apiVersion": "policy.waypoint.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "p", "namespace": "ns1"},
        "spec": {"targetRefs": [target], **body, **spec},
    }


BAD = [
    _base("ExtAuthzPolicy", failureMode="Sometimes"),
    _base("ExtAuthzPolicy", timeout="2 seconds"),
    _base("ExtAuthzPolicy", jwt={"requirement": "Always"}),
    _base("ExtAuthzPolicy", withRequestBody={"maxBytes": 0}),
    _base("ExtAuthzPolicy", decision="not a path"),
    _base("ExtAuthzPolicy", surprise=True),
    _base("TrafficPolicy", loadBalancer={"type": "Sticky"}),
    _base("TrafficPolicy", loadBalancer={"type": "ConsistentHash", "consistentHash": {}}),
    _base("TrafficPolicy", outlierDetection={"maxEjectionPercent": 101}),
    _base("TrafficPolicy", rateLimit={"local": {"tokens": 0, "fillInterval": "1s"}}),
    _base("TrafficPolicy", rateLimit={"local": {"tokens": 5}}),
    _base("TrafficPolicy", retry={"retryOn": ["sometimes"]}),
    _base("TrafficPolicy", faultInjection={"abort": {"httpStatus": 700}}),
    _base("TrafficPolicy", faultInjection={"delay": {"fixedDelay": "1s", "percentage": 150}}),
    _base("TrafficPolicy", mirror={"backendRef": {"name": "x"}}),
    _base("TrafficPolicy"),  # sets nothing
    # Cross-field rules: the CRDs' x-kubernetes-validations (CEL).
    _base("TrafficPolicy", loadBalancer={"type": "ConsistentHash"}),
    _base("TrafficPolicy", loadBalancer={"type": "Random", "consistentHash": {"header": "x"}}),
    {
        **_base("ExtAuthzPolicy"),
        "spec": {
            "targetRefs": [{"group": "example.dev", "kind": "Service", "name": "orders"}],
            "decision": "envoy/authz/allow",
        },
    },
]


@pytest.mark.parametrize("doc", BAD, ids=lambda d: str(d["spec"]))
def test_schema_and_translator_both_reject(doc: dict[str, Any]) -> None:
    assert _errors(doc), "the CRD schema accepted it"
    with pytest.raises(translate.fields.Bad):
        policyspecs.read(translate.policies.policy_object(doc))


def test_missing_target_refs_is_rejected_by_both() -> None:
    doc = _base("ExtAuthzPolicy")
    del doc["spec"]["targetRefs"]
    assert _errors(doc)
    with pytest.raises(translate.fields.Bad, match=r"spec\.targetRefs"):
        policyspecs.read(translate.policies.policy_object(doc))


def test_documented_rego_compiles() -> None:
    blocks = re.findall(r"```rego\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks
    for i, block in enumerate(blocks):
        engine = regorus.Engine()
        engine.add_policy(f"doc-{i}.rego", block)
        engine.set_input({"source_principal": "x", "jwt": {"claims": {"role": "writer"}}})
        assert engine.eval_rule("data.envoy.authz.orders_write") is False

"""The CRD rules of kube-apiserver (``tests.fakekube.crdrules``): every CRD the project ships
passes them, and each rule rejects what the API server rejects, with its message."""

from __future__ import annotations

import copy
import pathlib
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.fakekube import crdrules

REPO = pathlib.Path(__file__).resolve().parent.parent
Obj = dict[str, Any]


def _shipped() -> list[tuple[str, Obj]]:
    """Every CustomResourceDefinition in manifests/, by file."""
    found = []
    for path in sorted((REPO / "manifests").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                found.append((str(path.relative_to(REPO)), doc))
    return found


def test_the_project_ships_crds() -> None:
    assert {doc["metadata"]["name"] for _, doc in _shipped()} >= {
        "extauthzpolicies.policy.waypoint.dev",
        "trafficpolicies.policy.waypoint.dev",
    }


@pytest.mark.parametrize(
    ("where", "crd"), _shipped(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_shipped_crd_passes(where: str, crd: Obj) -> None:
    assert crdrules.check(crd) == [], where


KUSTOMIZATIONS = sorted(
    str(path.parent.relative_to(REPO)) for path in (REPO / "manifests").rglob("kustomization.yaml")
)


@pytest.mark.parametrize("where", KUSTOMIZATIONS)
def test_every_built_kustomization_passes(where: str) -> None:
    """What ``kubectl apply -k`` sends, not only the files."""
    built = subprocess.run(
        ["kubectl", "kustomize", str(REPO / where)], capture_output=True, text=True, check=True
    ).stdout
    crds = [d for d in yaml.safe_load_all(built) if d and d["kind"] == "CustomResourceDefinition"]
    if where in ("manifests/base", "manifests/base/crds"):
        assert len(crds) == 2
    for crd in crds:
        assert crdrules.check(crd) == [], crd["metadata"]["name"]


def _crd(schema: Obj, status: bool = False) -> Obj:
    version: Obj = {
        "name": "v1",
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
    }
    if status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "names": {
                "kind": "Widget",
                "plural": "widgets",
                "singular": "widget",
                "listKind": "WidgetList",
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def _root(spec: Obj) -> Obj:
    return {"type": "object", "properties": {"spec": spec}}


ROOT = "spec.validation.openAPIV3Schema"
SPEC = ROOT + ".properties[spec]"
CASES: list[tuple[str, Obj, str]] = [
    (
        "properties beside additionalProperties: false",
        _root(
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": False,
            }
        ),
        f"{SPEC}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive",
    ),
    (
        "properties beside an additionalProperties schema",
        _root(
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            }
        ),
        f"{SPEC}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive",
    ),
    (
        "a field without a type",
        _root({"type": "object", "properties": {"a": {"description": "untyped"}}}),
        f"{SPEC}.properties[a].type: Required value: must not be empty for specified object fields",
    ),
    (
        "array items without a type",
        _root({"type": "array", "items": {"minLength": 1}}),
        f"{SPEC}.items.type: Required value: must not be empty for specified array items",
    ),
    (
        "items as a list of schemas",
        _root({"type": "array", "items": [{"type": "string"}]}),
        f"{SPEC}.items: Forbidden: items must be a schema object and not an array",
    ),
    (
        "an array without items",
        _root({"type": "array"}),
        f"{SPEC}.items: Required value: must be specified",
    ),
    (
        "a map-list key that is not a property",
        _root(
            {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "properties": {"port": {"type": "integer"}},
                    "required": ["port"],
                },
            }
        ),
        f'{SPEC}.x-kubernetes-list-map-keys: Invalid value: ["name"]: entries must all be names of item properties',
    ),
    (
        "an optional map-list key without a default",
        _root(
            {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            }
        ),
        f"{SPEC}.items.properties[name].default: Required value: this property is in "
        "x-kubernetes-list-map-keys, so it must have a default or be a required property",
    ),
    (
        "a map-list key that is an object",
        _root(
            {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["ref"],
                "items": {
                    "type": "object",
                    "properties": {"ref": {"type": "object"}},
                    "required": ["ref"],
                },
            }
        ),
        f'{SPEC}.items.properties[ref].type: Invalid value: "object": must be a scalar type if parent '
        "array's x-kubernetes-list-type is map",
    ),
    (
        "map-list keys without the map list type",
        _root(
            {"type": "array", "x-kubernetes-list-map-keys": ["name"], "items": {"type": "string"}}
        ),
        f"{SPEC}.x-kubernetes-list-type: Required value: must be map if x-kubernetes-list-map-keys is non-empty",
    ),
    (
        "metadata restricting more than name",
        {
            "type": "object",
            "properties": {
                "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}
            },
        },
        f"{ROOT}.properties[metadata]: Forbidden: must not specify anything other than name and "
        "generateName, but metadata is implicitly specified",
    ),
    (
        "uniqueItems",
        _root({"type": "array", "uniqueItems": True, "items": {"type": "string"}}),
        f"{SPEC}.uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
    ),
    ("$ref", _root({"$ref": "#/definitions/x"}), f"{SPEC}.$ref: Forbidden: $ref is not supported"),
    (
        "type null",
        _root({"type": "null"}),
        f"{SPEC}.type: Forbidden: type cannot be set to null, use nullable as an alternative",
    ),
    (
        "an unknown type",
        _root({"type": "map"}),
        f'{SPEC}.type: Unsupported value: "map": supported values: "array", "boolean", "integer", '
        '"number", "object", "string"',
    ),
    (
        "a nullable root",
        {"type": "object", "nullable": True},
        f"{ROOT}.nullable: Forbidden: nullable cannot be true at the root",
    ),
    (
        "additionalProperties at the root",
        {"type": "object", "additionalProperties": {"type": "string"}},
        f"{ROOT}.additionalProperties: Forbidden: must not be used at the root",
    ),
    (
        "a default that does not validate",
        _root({"type": "string", "enum": ["A", "B"], "default": "C"}),
        f'{SPEC}.default: Invalid value: "C": Unsupported value: "C": supported values: "A", "B"',
    ),
    (
        "a default with a field pruning drops",
        _root({"type": "object", "properties": {"a": {"type": "string"}}, "default": {"b": "x"}}),
        f'{SPEC}.default: Invalid value: {{"b": "x"}}: unknown field "b"',
    ),
    (
        "a type inside anyOf",
        _root({"type": "string", "anyOf": [{"type": "string"}]}),
        f"{SPEC}.anyOf[0].type: Forbidden: must be empty to be structural",
    ),
    (
        "preserve-unknown-fields: false",
        _root({"type": "object", "x-kubernetes-preserve-unknown-fields": False}),
        f"{SPEC}.x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined",
    ),
    (
        "a rule with no text",
        _root({"type": "object", "x-kubernetes-validations": [{"rule": " "}]}),
        f"{SPEC}.x-kubernetes-validations[0].rule: Required value: rule is not specified",
    ),
]


@pytest.mark.parametrize(("name", "schema", "error"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_rejects_what_the_api_server_rejects(name: str, schema: Obj, error: str) -> None:
    assert error in [str(e) for e in crdrules.check(_crd(schema))]


ALLOWED: list[tuple[str, Obj]] = [
    ("a map", _root({"type": "object", "additionalProperties": {"type": "string"}})),
    (
        "an int-or-string without a type",
        _root({"type": "object", "properties": {"port": {"x-kubernetes-int-or-string": True}}}),
    ),
    (
        "a node that keeps unknown fields",
        _root(
            {
                "type": "object",
                "properties": {"raw": {"x-kubernetes-preserve-unknown-fields": True}},
            }
        ),
    ),
    (
        "metadata restricting only the name",
        {
            "type": "object",
            "properties": {
                "metadata": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 63}},
                }
            },
        },
    ),
    (
        "a keyed list with a required key",
        _root(
            {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
            }
        ),
    ),
    (
        "additionalProperties: true beside properties",
        _root(
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": True,
            }
        ),
    ),
]


@pytest.mark.parametrize(("name", "schema"), ALLOWED, ids=[c[0] for c in ALLOWED])
def test_what_the_api_server_accepts_passes(name: str, schema: Obj) -> None:
    assert crdrules.check(_crd(schema)) == []


def _edit(change: Callable[[Obj], None]) -> Obj:
    crd = _crd({"type": "object"})
    change(crd)
    return crd


def test_crd_level_rules() -> None:
    def rename(crd: Obj) -> None:
        crd["metadata"]["name"] = "widget.example.dev"

    def two_storage(crd: Obj) -> None:
        second = copy.deepcopy(crd["spec"]["versions"][0])
        second["name"] = "v2"
        crd["spec"]["versions"].append(second)

    messages = {str(e) for e in crdrules.check(_edit(rename))}
    assert (
        'metadata.name: Invalid value: "widget.example.dev": must be spec.names.plural+"."+spec.group'
        in messages
    )
    messages = {str(e) for e in crdrules.check(_edit(two_storage))}
    assert (
        'spec.versions: Invalid value: ["v1", "v2"]: must have exactly one version marked as storage version'
        in messages
    )


def test_versions_with_their_own_schemas_report_by_version() -> None:
    crd = _crd({"type": "object"})
    second = copy.deepcopy(crd["spec"]["versions"][0])
    second.update(name="v2", storage=False)
    second["schema"]["openAPIV3Schema"] = _root({"type": "array"})
    crd["spec"]["versions"].append(second)
    assert [str(e) for e in crdrules.check(crd)] == [
        "spec.versions[1].schema.openAPIV3Schema.properties[spec].items: Required value: must be specified"
    ]


def test_status_subresource_limits_the_root() -> None:
    crd = _crd({"type": "object", "description": "d", "minProperties": 1}, status=True)
    (error,) = crdrules.check(crd)
    assert error.field == ROOT
    assert (
        "fields are allowed at the root of the schema if the status subresource is enabled"
        in str(error)
    )

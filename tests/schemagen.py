"""Generates ``waypoint/schema/core.py``: the core kinds' schemas, from kubernetes-validate's.

kubernetes-validate (a test dependency) ships the Kubernetes OpenAPI schemas as JSON Schema.
``convert`` turns the definitions the product's core kinds use into the compact format, and
``render`` writes them as a Python module; ``python -m tests.schemagen`` rewrites the module,
and ``tests/test_schema.py`` checks that the committed one still equals a fresh conversion.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import kubernetes_validate

from waypoint.schema import meta, nodes

KUBERNETES = "v1.33.0"
SCHEMAS = pathlib.Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
TARGET = pathlib.Path(__file__).resolve().parents[1] / "waypoint" / "schema" / "core.py"
# (apiVersion, kind, definition) of each core kind the product reads.
KINDS = (
    ("v1", "Namespace", "io.k8s.api.core.v1.Namespace"),
    ("v1", "Service", "io.k8s.api.core.v1.Service"),
    ("v1", "Pod", "io.k8s.api.core.v1.Pod"),
    ("v1", "ConfigMap", "io.k8s.api.core.v1.ConfigMap"),
    ("discovery.k8s.io/v1", "EndpointSlice", "io.k8s.api.discovery.v1.EndpointSlice"),
)
# Definitions with a scalar or hand-written form; ObjectMeta is ``meta.OBJECT_META``.
SPECIAL: Mapping[str, tuple[nodes.Node, str]] = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": (meta.OBJECT_META, "meta.OBJECT_META"),
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": (nodes.INT_OR_STR, "nodes.INT_OR_STR"),
    "io.k8s.apimachinery.pkg.api.resource.Quantity": (nodes.QUANTITY, "nodes.QUANTITY"),
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": (nodes.TIME, "nodes.TIME"),
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime": (nodes.TIME, "nodes.TIME"),
}
_SCALARS = {
    nodes.STR: "nodes.STR",
    nodes.INT: "nodes.INT",
    nodes.NUM: "nodes.NUM",
    nodes.BOOL: "nodes.BOOL",
    nodes.TIME: "nodes.TIME",
    nodes.INT_OR_STR: "nodes.INT_OR_STR",
    nodes.QUANTITY: "nodes.QUANTITY",
}


def definitions(version: str = KUBERNETES) -> dict[str, Any]:
    path = SCHEMAS / f"{version}-local-strict" / "_definitions.json"
    defs: dict[str, Any] = json.loads(path.read_text())["$defs"]
    return defs


class Converter:
    """JSON Schema definitions → nodes; each definition converted once, in dependency order."""

    def __init__(self, defs: Mapping[str, Any]) -> None:
        self.defs = defs
        self.done: dict[str, nodes.Node] = {}  # insertion order = dependency order

    def ref(self, name: str, stack: tuple[str, ...] = ()) -> nodes.Node:
        if name in SPECIAL:
            return SPECIAL[name][0]
        if name not in self.done:
            if name in stack:  # a recursive type: not in the kinds read here
                return nodes.FREE
            self.done[name] = self.node(self.defs[name], (*stack, name))
        return self.done[name]

    def node(self, schema: Mapping[str, Any], stack: tuple[str, ...]) -> nodes.Node:
        if "$ref" in schema:
            return self.ref(str(schema["$ref"]).rsplit("/", 1)[-1], stack)
        kinds = schema.get("type")
        types = [t for t in (kinds if isinstance(kinds, list) else [kinds]) if t != "null"]
        kind = types[0] if types else None
        if "properties" in schema:
            fields = {k: self.node(v, stack) for k, v in schema["properties"].items()}
            return nodes.obj(fields, tuple(schema.get("required", ())))
        if kind == "object":
            extra = schema.get("additionalProperties")
            return nodes.MapOf(self.node(extra, stack)) if isinstance(extra, dict) else nodes.FREE
        if kind == "array":
            return nodes.arr(self.node(schema["items"], stack))
        if kind == "string":
            return nodes.TIME if schema.get("format") == "date-time" else nodes.STR
        return {"integer": nodes.INT, "number": nodes.NUM, "boolean": nodes.BOOL}.get(
            str(kind), nodes.FREE
        )

    def kind(self, name: str) -> nodes.Obj:
        """A top-level kind: its own fields, metadata as ObjectMeta, status left unchecked."""
        top = self.defs[name]
        fields: dict[str, nodes.Node] = {}
        for field, schema in top["properties"].items():
            if field in ("apiVersion", "kind"):
                fields[field] = nodes.STR
            elif field == "status":
                fields[field] = nodes.FREE
            else:
                fields[field] = self.node(schema, (name,))
        return nodes.obj(fields, tuple(top.get("required", ())))


def convert(version: str = KUBERNETES) -> dict[tuple[str, str], nodes.Obj]:
    converter = Converter(definitions(version))
    return {(api, kind): converter.kind(name) for api, kind, name in KINDS}


def _constant(name: str) -> str:
    group, version, kind = name.rsplit(".", 3)[-3:]
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", kind)
    return f"{group}_{version}_{snake}".upper()


def render(version: str = KUBERNETES) -> str:
    converter = Converter(definitions(version))
    kinds = {(api, kind): converter.kind(name) for api, kind, name in KINDS}
    names = {id(node): _constant(name) for name, node in converter.done.items()}

    def expr(node: nodes.Node, top: bool = False) -> str:
        if not top and id(node) in names:
            return names[id(node)]
        for special, text in SPECIAL.values():
            if node is special:
                return text
        if isinstance(node, nodes.Scalar):
            return _SCALARS[node]
        if isinstance(node, nodes.Arr):
            return f"nodes.arr({expr(node.item)})"
        if isinstance(node, nodes.MapOf):
            return f"nodes.MapOf({expr(node.value)})"
        if isinstance(node, nodes.Obj):
            body = ", ".join(f"{k!r}: {expr(v)}" for k, v in node.fields.items())
            required = "".join(f"{r!r}, " for r in sorted(node.required))
            return f"nodes.obj({{{body}}}, required=({required}))"
        return "nodes.FREE"

    lines = [
        f'"""Core Kubernetes kinds in the compact schema format: GENERATED by ``python -m '
        f"tests.schemagen``\nfrom the Kubernetes {version} OpenAPI schemas that kubernetes-validate "
        f'ships. Do not edit."""',
        "",
        "from __future__ import annotations",
        "",
        "from waypoint.schema import meta, nodes",
        "",
    ]
    lines += [f"{names[id(node)]} = {expr(node, top=True)}" for node in converter.done.values()]
    entries = ", ".join(
        f"({api!r}, {kind!r}): {expr(node, top=True)}" for (api, kind), node in kinds.items()
    )
    lines += ["", f"KINDS: dict[tuple[str, str], nodes.Obj] = {{{entries}}}", ""]
    return "\n".join(lines)


def main() -> None:
    TARGET.write_text(render())
    subprocess.run([sys.executable, "-m", "ruff", "format", str(TARGET)], check=True)


if __name__ == "__main__":
    main()

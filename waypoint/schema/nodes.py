"""The compact schema format: what fields an object may have, their types, enums and limits.

A schema is a tree of frozen nodes, written by hand in this package from the published CRDs
(each module names its sources). It keeps only what catches mistakes in hand-written YAML:
allowed fields, required fields, types, enums and list sizes. Patterns, string lengths and
CEL rules are left to the API server; the translator judges meaning.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Scalar:
    """A string, integer, number, boolean, timestamp, int-or-string or quantity, optionally one
    of ``enum``."""

    type: str
    enum: tuple[Any, ...] = ()


@dataclasses.dataclass(frozen=True)
class Obj:
    """An object with a closed set of fields: any other field is reported as unknown."""

    fields: Mapping[str, Node]
    required: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Arr:
    item: Node
    max_items: int | None = None
    min_items: int = 0


@dataclasses.dataclass(frozen=True)
class MapOf:
    """An object with free keys (labels, annotations, options), each value of one schema."""

    value: Node


@dataclasses.dataclass(frozen=True)
class Free:
    """Anything goes (``x-kubernetes-preserve-unknown-fields``, or a part not checked here)."""


Node = Scalar | Obj | Arr | MapOf | Free

STR = Scalar("string")
INT = Scalar("integer")
NUM = Scalar("number")
BOOL = Scalar("boolean")
# Timestamps are strings on the wire; YAML may have read them as datetimes already.
TIME = Scalar("timestamp")
# Kubernetes' IntOrString (a Service's targetPort) and resource Quantity ("100m", 2, 0.5).
INT_OR_STR = Scalar("int-or-string")
QUANTITY = Scalar("quantity")
FREE = Free()
STR_MAP = MapOf(STR)


def obj(fields: Mapping[str, Node], required: tuple[str, ...] = ()) -> Obj:
    unknown = set(required) - set(fields)
    if unknown:
        raise ValueError(f"required fields not in the schema: {sorted(unknown)}")
    return Obj(types.MappingProxyType(dict(fields)), frozenset(required))


def extend(base: Obj, fields: Mapping[str, Node], required: tuple[str, ...] = ()) -> Obj:
    """``base`` with more fields (Go's embedded structs: BackendRef embeds its object ref)."""
    return obj({**base.fields, **fields}, (*sorted(base.required), *required))


def arr(item: Node, max_items: int | None = None, min_items: int = 0) -> Arr:
    return Arr(item, max_items, min_items)


def enum(*values: Any) -> Scalar:
    kind = "integer" if all(isinstance(v, int) for v in values) else "string"
    return Scalar(kind, tuple(values))

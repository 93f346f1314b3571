"""Schema checks for the Kubernetes objects the product reads: every problem with its path.

Pure: no I/O and no mutable state. ``check`` walks one object against the schema of its
``apiVersion`` and ``kind`` (Gateway API, GAMMA and Istio security kinds, and the core kinds
the product reads; see ``gatewayapi``, ``istio`` and ``core`` for the sources) and reports unknown fields (with a did-you-mean), wrong types, values
outside an enum, missing required fields and lists of the wrong size. An object whose
apiVersion/kind has no schema here (other tools' objects) is not checked at all.

This is the strict view an API server takes with ``fieldValidation=Strict``; what the fields
mean (a Service that does not exist, a bad regex) is the translator's concern.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from waypoint.schema import core, gatewayapi, istio, nodes

# Pods are read only for their labels, service account and IPs, and the controller's cache
# keeps only those (controller/trim.py): a trimmed Pod would fail the full schema (no
# containers), so Pods are not checked; the API server validated them before we saw them.
_UNCHECKED = {("v1", "Pod")}
SCHEMAS: Mapping[tuple[str, str], nodes.Obj] = types.MappingProxyType(
    {
        **{key: node for key, node in core.KINDS.items() if key not in _UNCHECKED},
        **gatewayapi.KINDS,
        **istio.KINDS,
    }
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding: where (``spec.rules[0].backendRef``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def schema_for(obj: Mapping[str, Any]) -> nodes.Obj | None:
    return SCHEMAS.get((str(obj.get("apiVersion") or ""), str(obj.get("kind") or "")))


def check(obj: Mapping[str, Any]) -> tuple[Problem, ...]:
    """Every schema problem of ``obj``, in document order; () if it has no schema here."""
    key = (str(obj.get("apiVersion") or ""), str(obj.get("kind") or ""))
    fast = _FAST.get(key)
    if fast is None or fast(obj):
        return ()
    return tuple(_walk(SCHEMAS[key], obj, ""))


Check = Callable[[Any], bool]


def _compile(node: nodes.Node) -> Check:
    """A closure that answers "is ``value`` free of problems?" for one schema node.

    The fast path: nearly every object is valid, and these closures build no paths and no
    messages (``_walk`` explains a False). Plain ``dict``/``list``/scalar types only, as YAML
    and JSON give them; anything else falls back to ``_walk``, which handles any Mapping."""
    if isinstance(node, nodes.Scalar):
        return _compile_scalar(node)
    if isinstance(node, nodes.Obj):
        return _compile_object(node)
    if isinstance(node, nodes.Arr):
        return _compile_array(node)
    if isinstance(node, nodes.MapOf):
        plain = _plain_type(node.value)
        if plain is not None:  # labels, annotations: one set of the values' types
            return lambda value: type(value) is dict and {*map(type, value.values())} <= {plain}
        value_ok = _compile(node.value)
        return lambda value: type(value) is dict and all(map(value_ok, value.values()))
    return lambda value: True


_PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "timestamp": (str, datetime.datetime, datetime.date),
    "int-or-string": (str, int),
    "quantity": (str, int, float),
}


def _compile_scalar(node: nodes.Scalar) -> Check:
    plain = _PLAIN_TYPES[node.type]
    allowed = frozenset(node.enum)
    if allowed:
        return lambda value: type(value) in plain and value in allowed
    if len(plain) == 1:  # the common case, and an identity test is the cheapest
        only = plain[0]
        return lambda value: type(value) is only
    return lambda value: type(value) in plain


def _plain_type(node: nodes.Node) -> type | None:
    """The one Python type a scalar without enum accepts, else None."""
    if isinstance(node, nodes.Scalar) and not node.enum and len(_PLAIN_TYPES[node.type]) == 1:
        return _PLAIN_TYPES[node.type][0]
    return None


def _compile_object(node: nodes.Obj) -> Check:
    # Leaves of one plain type (most fields) are checked inline: no call per field.
    table = {name: (_plain_type(child), _compile(child)) for name, child in node.fields.items()}
    required = tuple(sorted(node.required))

    def ok(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for key, item in value.items():
            entry = table.get(key)
            if entry is None:
                return False
            if item is None:
                continue
            plain, check = entry
            if plain is not None:
                if type(item) is not plain:
                    return False
            elif not check(item):
                return False
        # map/in run in C: no generator frame per object.
        return not required or None not in map(value.get, required)

    return ok


def _compile_array(node: nodes.Arr) -> Check:
    item_ok = _compile(node.item)
    low, high = node.min_items, node.max_items

    def ok(value: Any) -> bool:
        if type(value) is not list or len(value) < low or (high is not None and len(value) > high):
            return False
        return all(map(item_ok, value))

    return ok


# A plain dict on the hot path (a mapping proxy costs a little on every lookup); never changed.
_FAST: dict[tuple[str, str], Check] = {key: _compile(node) for key, node in SCHEMAS.items()}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, datetime.date):
        return "timestamp"
    return type(value).__name__


# Which Python values each scalar type accepts (bool is an int in Python, not in JSON).
_ACCEPTS = {
    "string": ("string",),
    "integer": ("integer",),
    "number": ("integer", "number"),
    "boolean": ("boolean",),
    "timestamp": ("string", "timestamp"),
    "int-or-string": ("string", "integer"),
    "quantity": ("string", "integer", "number"),
}


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _walk(node: nodes.Node, value: Any, path: str) -> Iterator[Problem]:
    if isinstance(node, nodes.Free):
        return
    if isinstance(node, nodes.Scalar):
        yield from _scalar(node, value, path)
    elif isinstance(node, nodes.Obj):
        yield from _object(node, value, path)
    elif isinstance(node, nodes.Arr):
        yield from _array(node, value, path)
    else:
        yield from _map(node, value, path)


def _wrong_type(expected: str, value: Any, path: str) -> Problem:
    return Problem(path, f"expected {expected}, got {_type_name(value)}")


def _scalar(node: nodes.Scalar, value: Any, path: str) -> Iterator[Problem]:
    if _type_name(value) not in _ACCEPTS[node.type]:
        expected = {"timestamp": "string", "int-or-string": "integer or string"}.get(node.type)
        yield _wrong_type(expected or node.type, value, path)
    elif node.enum and value not in node.enum:
        choices = ", ".join(str(v) for v in node.enum)
        # Enum values are short and alike (PATCH, FETCH): hint only on a near-exact match.
        hint = _did_you_mean(str(value), [str(v) for v in node.enum], cutoff=0.8)
        yield Problem(path, f"unsupported value {value!r}{hint} (one of: {choices})")


def _object(node: nodes.Obj, value: Any, path: str) -> Iterator[Problem]:
    if not isinstance(value, Mapping):
        yield _wrong_type("object", value, path)
        return
    for key, item in value.items():
        name = str(key)
        child = node.fields.get(name)
        if child is None:
            hint = _did_you_mean(name, list(node.fields))
            yield Problem(_join(path, name), f"unknown field{hint}")
        elif item is not None:  # null is "not set", as the API server reads it
            yield from _walk(child, item, _join(path, name))
    for name in sorted(node.required):
        if value.get(name) is None:
            yield Problem(_join(path, name), "required field missing")


def _array(node: nodes.Arr, value: Any, path: str) -> Iterator[Problem]:
    if not isinstance(value, list | tuple):
        yield _wrong_type("array", value, path)
        return
    if node.max_items is not None and len(value) > node.max_items:
        yield Problem(path, f"at most {node.max_items} items allowed, got {len(value)}")
    if len(value) < node.min_items:
        yield Problem(path, f"at least {node.min_items} item(s) required, got {len(value)}")
    for index, item in enumerate(value):
        yield from _walk(node.item, item, f"{path}[{index}]")


def _map(node: nodes.MapOf, value: Any, path: str) -> Iterator[Problem]:
    if not isinstance(value, Mapping):
        yield _wrong_type("object", value, path)
        return
    for key, item in value.items():
        yield from _walk(node.value, item, f"{path}[{str(key)!r}]")


def _did_you_mean(name: str, known: list[str], cutoff: float = 0.6) -> str:
    # Case first (jwksURI is jwksUri, not jwks), then spelling.
    lowered = {k.lower(): k for k in known}
    close = [lowered[name.lower()]] if name.lower() in lowered else []
    close = close or difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""

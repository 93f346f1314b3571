"""What the API server does to a custom resource with its CRD's structural schema: prune
unknown fields, apply defaults, then validate.

Under ``staging/src/k8s.io/apiextensions-apiserver/pkg/`` of kubernetes/kubernetes:
``apiserver/schema/pruning/algorithm.go`` (fields a schema does not declare are dropped, unless
``x-kubernetes-preserve-unknown-fields``; ``apiVersion``, ``kind`` and ``metadata`` are kept at
the root and in embedded resources), ``apiserver/schema/defaulting/algorithm.go`` and
``prunenulls.go`` (absent fields get their ``default``; a null in a non-nullable field becomes
its default or is dropped), and ``apiserver/validation/validation.go`` (``ValidateCustomResource``
runs the OpenAPI value validations of k8s.io/kube-openapi ``pkg/validation/validate``).
Unknown fields are errors only with ``fieldValidation=Strict``
(``apiserver/customresource_handler.go``); otherwise they become ``Warning`` headers.

``x-kubernetes-validations`` (CEL) rules are evaluated by ``cel``, with the limits it states.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from tests.fakekube import cel
from tests.fakekube import fielderrors as fe

Schema = Mapping[str, Any]
ROOT_KEPT = ("apiVersion", "kind", "metadata")
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def admit(obj: Any, schema: Schema) -> tuple[Any, list[str], list[fe.FieldError]]:
    """``obj`` pruned and defaulted, the unknown fields dropped, and the validation errors."""
    pruned, unknown = prune(obj, schema, root=True)
    defaulted = default(pruned, schema)
    return defaulted, unknown, validate(defaulted, schema, "", root=True)


def prune(value: Any, schema: Schema, path: str = "", root: bool = False) -> tuple[Any, list[str]]:
    unknown: list[str] = []
    return _prune(value, schema, path, root, unknown), unknown


def _prune(value: Any, s: Schema, path: str, root: bool, unknown: list[str]) -> Any:
    if isinstance(value, list):
        items = s.get("items")
        if not isinstance(items, Mapping):
            return value
        return [_prune(item, items, f"{path}[{i}]", False, unknown) for i, item in enumerate(value)]
    if not isinstance(value, Mapping):
        return value
    props = s.get("properties") or {}
    additional = s.get("additionalProperties")
    keep_meta = root or s.get("x-kubernetes-embedded-resource")
    result: dict[str, Any] = {}
    for key, child in value.items():
        where = f"{path}.{key}" if path else key
        if keep_meta and key in ROOT_KEPT:
            result[key] = child
        elif key in props:
            result[key] = _prune(child, props[key], where, False, unknown)
        elif isinstance(additional, Mapping):
            result[key] = _prune(child, additional, where, False, unknown)
        elif additional is True or s.get("x-kubernetes-preserve-unknown-fields"):
            result[key] = child
        else:
            unknown.append(where)
    return result


def default(value: Any, s: Schema) -> Any:
    """defaulting/algorithm.go, and prunenulls.go for nulls in non-nullable fields."""
    if isinstance(value, list) and isinstance(s.get("items"), Mapping):
        return [default(item, s["items"]) for item in value]
    if not isinstance(value, Mapping):
        return value
    result = dict(value)
    props = s.get("properties") or {}
    for key, sub in props.items():
        if key in result and result[key] is None and not sub.get("nullable"):
            if "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
            else:
                del result[key]
        elif key not in result and "default" in sub:
            result[key] = copy.deepcopy(sub["default"])
        if key in result:
            result[key] = default(result[key], sub)
    additional = s.get("additionalProperties")
    if isinstance(additional, Mapping):
        for key in [k for k in result if k not in props]:
            result[key] = default(result[key], additional)
    return result


def validate(value: Any, s: Schema, path: str, root: bool = False) -> list[fe.FieldError]:
    errors: list[fe.FieldError] = []
    _validate(value, s, path, root, errors)
    return errors


def _validate(value: Any, s: Schema, path: str, root: bool, errors: list[fe.FieldError]) -> None:
    where = path or "<root>"
    if value is None:
        if not s.get("nullable") and (s.get("type") or s.get("x-kubernetes-int-or-string")):
            errors.append(_type_error(where, value, s.get("type") or "integer or string"))
        return
    if s.get("x-kubernetes-int-or-string"):
        if not (_is_int(value) or isinstance(value, str)):
            errors.append(_type_error(where, value, "integer or string"))
            return
    elif s.get("type") and not _has_type(value, s["type"]):
        errors.append(_type_error(where, value, s["type"]))
        return
    if "enum" in s and value not in s["enum"]:
        errors.append(fe.not_supported(where, value, list(s["enum"])))
    if isinstance(value, str):
        _string(value, s, where, errors)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _number(value, s, where, errors)
    elif isinstance(value, list):
        _array(value, s, path, errors)
    elif isinstance(value, Mapping):
        _object(value, s, path, root, errors)
    _junctors(value, s, path, errors)
    if s.get("x-kubernetes-validations"):
        errors += cel.check(value, s["x-kubernetes-validations"], where)


def _type_error(where: str, value: Any, wanted: str) -> fe.FieldError:
    actual = _json_type(value)
    return fe.FieldError(
        where, "TypeInvalid", f'{where} in body must be of type {wanted}: "{actual}"', actual
    )


def _json_type(value: Any) -> str:
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
    return "array" if isinstance(value, list) else "object"


def _is_int(value: Any) -> bool:
    # The JSON decoder gives Go an int64 for 3 and for 3.0 alike.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _has_type(value: Any, kind: str) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": _is_int,
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, Mapping),
    }
    check = checks.get(kind)
    return bool(check(value)) if check else True


def _string(value: str, s: Schema, where: str, errors: list[fe.FieldError]) -> None:
    if "maxLength" in s and len(value) > s["maxLength"]:
        errors.append(
            fe.FieldError(where, "TooLong", f"may not be more than {s['maxLength']} bytes", value)
        )
    if "minLength" in s and len(value) < s["minLength"]:
        errors.append(
            fe.invalid(
                where, value, f"{where} in body should be at least {s['minLength']} chars long"
            )
        )
    if "pattern" in s and not re.search(s["pattern"], value):
        errors.append(fe.invalid(where, value, f"{where} in body should match '{s['pattern']}'"))


def _number(value: float, s: Schema, where: str, errors: list[fe.FieldError]) -> None:
    bounds = {"int32": INT32, "int64": INT64}.get(str(s.get("format")))
    if bounds and s.get("type") == "integer" and not bounds[0] <= value <= bounds[1]:
        errors.append(fe.invalid(where, value, f"{where} in body must be of type {s['format']}"))
    if "minimum" in s:
        low = s["minimum"]
        if value < low or (s.get("exclusiveMinimum") and value == low):
            relation = "greater than" if s.get("exclusiveMinimum") else "greater than or equal to"
            errors.append(fe.invalid(where, value, f"{where} in body should be {relation} {low}"))
    if "maximum" in s:
        high = s["maximum"]
        if value > high or (s.get("exclusiveMaximum") and value == high):
            relation = "less than" if s.get("exclusiveMaximum") else "less than or equal to"
            errors.append(fe.invalid(where, value, f"{where} in body should be {relation} {high}"))
    if s.get("multipleOf") and (value / s["multipleOf"]) % 1:
        errors.append(
            fe.invalid(where, value, f"{where} in body should be a multiple of {s['multipleOf']}")
        )


def _array(value: list[Any], s: Schema, path: str, errors: list[fe.FieldError]) -> None:
    where = path or "<root>"
    if "maxItems" in s and len(value) > s["maxItems"]:
        errors.append(
            fe.FieldError(where, "TooMany", f"must have at most {s['maxItems']} items", len(value))
        )
    if "minItems" in s and len(value) < s["minItems"]:
        errors.append(
            fe.invalid(
                where, len(value), f"{where} in body should have at least {s['minItems']} items"
            )
        )
    items = s.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            _validate(item, items, f"{path}[{i}]", False, errors)
    # listtype/validation.go: map keys and set members are unique.
    list_type = s.get("x-kubernetes-list-type")
    seen: set[str] = set()
    for i, item in enumerate(value):
        if list_type == "map" and isinstance(item, Mapping):
            key = json.dumps(
                {k: item.get(k) for k in s.get("x-kubernetes-list-map-keys") or []}, sort_keys=True
            )
        elif list_type == "set":
            key = json.dumps(item, sort_keys=True)
        else:
            continue
        if key in seen:
            errors.append(
                fe.FieldError(
                    f"{path}[{i}]", "Duplicate", "", item if list_type == "set" else json.loads(key)
                )
            )
        seen.add(key)


def _object(
    value: Mapping[str, Any], s: Schema, path: str, root: bool, errors: list[fe.FieldError]
) -> None:
    where = path or "<root>"
    if "maxProperties" in s and len(value) > s["maxProperties"]:
        errors.append(
            fe.FieldError(
                where, "TooMany", f"must have at most {s['maxProperties']} properties", len(value)
            )
        )
    if "minProperties" in s and len(value) < s["minProperties"]:
        errors.append(
            fe.invalid(
                where,
                len(value),
                f"{where} in body should have at least {s['minProperties']} properties",
            )
        )
    for name in s.get("required") or []:
        if name not in value:
            errors.append(fe.required(f"{path}.{name}" if path else name))
    props = s.get("properties") or {}
    additional = s.get("additionalProperties")
    for key, child in value.items():
        child_path = f"{path}.{key}" if path else key
        if root and key == "metadata":
            continue  # ObjectMeta has its own validation
        if key in props:
            _validate(child, props[key], child_path, False, errors)
        elif isinstance(additional, Mapping):
            _validate(child, additional, child_path, False, errors)


def _junctors(value: Any, s: Schema, path: str, errors: list[fe.FieldError]) -> None:
    where = path or "<root>"
    for sub in s.get("allOf") or []:
        _validate(value, sub, path, False, errors)
    int_or_string = s.get("x-kubernetes-int-or-string")
    if (
        s.get("anyOf")
        and not int_or_string
        and all(validate(value, sub, path) for sub in s["anyOf"])
    ):
        errors.append(
            fe.invalid(where, value, f'"{where}" must validate at least one schema (anyOf)')
        )
    if s.get("oneOf"):
        passing = sum(1 for sub in s["oneOf"] if not validate(value, sub, path))
        if passing != 1:
            errors.append(
                fe.invalid(where, value, f'"{where}" must validate one and only one schema (oneOf)')
            )
    if isinstance(s.get("not"), Mapping) and not validate(value, s["not"], path):
        errors.append(fe.invalid(where, value, f'"{where}" must not validate the schema (not)'))

"""The rules kube-apiserver enforces on a CustomResourceDefinition before it stores one.

Each rule names where Kubernetes implements it, under
``staging/src/k8s.io/apiextensions-apiserver/pkg/`` of kubernetes/kubernetes:

- ``VALIDATION``: ``apis/apiextensions/validation/validation.go``
  (``ValidateCustomResourceDefinitionOpenAPISchema``, ``specStandardValidatorV3.validate``,
  ``validateMapListKeysMapSet``, ``validateCustomResourceDefinitionValidation``);
- ``STRUCTURAL``: ``apiserver/schema/validation.go`` (``validateStructuralInvariants``,
  ``validateStructuralMetadataInvariants``, ``validateNestedValueValidation``);
- ``CONVERT``: ``apiserver/schema/convert.go`` (``NewStructural``);
- ``DEFAULTS``: ``apiserver/schema/defaulting/validation.go`` (``ValidateDefaults``: a default
  must validate against its schema and survive pruning).

Not modelled: CEL compilation and cost estimation of ``x-kubernetes-validations``, and the
completeness check (``validateStructuralCompleteness``) of fields named only inside
``allOf``/``anyOf``/``oneOf``/``not``. Error paths follow the server: a CRD whose versions all
share one schema reports under ``spec.validation.openAPIV3Schema``, as the internal version
it is converted to does; otherwise under ``spec.versions[i].schema.openAPIV3Schema``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from tests.fakekube import crschema
from tests.fakekube import fielderrors as fe

Schema = Mapping[str, Any]

# VALIDATION: openapiV3Types (requireValidPropertyType).
TYPES = ("array", "boolean", "integer", "number", "object", "string")
# VALIDATION: specStandardValidatorV3.validate forbids these keywords.
UNSUPPORTED = {
    "id": "id is not supported",
    "additionalItems": "additionalItems is not supported",
    "patternProperties": "patternProperties is not supported",
    "definitions": "definitions is not supported",
    "dependencies": "dependencies is not supported",
    "$ref": "$ref is not supported",
    "$schema": "$schema is not supported",
}
# VALIDATION: allowedFieldsAtRootSchema, when the status subresource is enabled.
ROOT_FIELDS_WITH_STATUS = {
    "description",
    "type",
    "format",
    "title",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "required",
    "items",
    "properties",
    "externalDocs",
    "example",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
}
# STRUCTURAL: validateNestedValueValidation forbids these inside allOf/anyOf/oneOf/not.
NESTED_FORBIDDEN = {
    "type": "must be empty to be structural",
    "additionalProperties": "must be undefined to be structural",
    "default": "must be undefined to be structural",
    "title": "must be empty to be structural",
    "description": "must be empty to be structural",
    "nullable": "must be false to be structural",
    "externalDocs": "must be undefined to be structural",
    "x-kubernetes-preserve-unknown-fields": "must be false to be structural",
    "x-kubernetes-embedded-resource": "must be false to be structural",
    "x-kubernetes-int-or-string": "must be false to be structural",
    "x-kubernetes-list-map-keys": "must be empty to be structural",
    "x-kubernetes-list-type": "must be undefined to be structural",
    "x-kubernetes-map-type": "must be undefined to be structural",
    "x-kubernetes-validations": "must be empty to be structural",
}
FIELD, ITEM, ROOT = "field", "item", "root"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def check(crd: Mapping[str, Any]) -> list[fe.FieldError]:
    """Every rule ``crd`` breaks, as the API server would list them in its 422."""
    spec = crd.get("spec") or {}
    errors = _check_names(crd, spec)
    versions = spec.get("versions") or []
    schemas = [((v.get("schema") or {}).get("openAPIV3Schema")) for v in versions]
    shared = len(versions) > 0 and all(s == schemas[0] for s in schemas)
    for i, version in enumerate(versions):
        where = (
            "spec.validation.openAPIV3Schema"
            if shared
            else f"spec.versions[{i}].schema.openAPIV3Schema"
        )
        schema = schemas[i]
        if schema is None:
            # VALIDATION: apiextensions/v1 requires a schema for every version.
            errors.append(
                fe.required(f"spec.versions[{i}].schema.openAPIV3Schema", "schemas are required")
            )
            continue
        if shared and i > 0:
            continue
        has_status = "status" in (version.get("subresources") or {})
        errors += check_schema(schema, where, has_status)
    return errors


def _check_names(crd: Mapping[str, Any], spec: Mapping[str, Any]) -> list[fe.FieldError]:
    errors: list[fe.FieldError] = []
    names = spec.get("names") or {}
    group = str(spec.get("group") or "")
    plural = str(names.get("plural") or "")
    name = (crd.get("metadata") or {}).get("name")
    # VALIDATION: ValidateCustomResourceDefinition.
    if name != f"{plural}.{group}":
        errors.append(fe.invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    if "." not in group:
        errors.append(fe.invalid("spec.group", group, "should be a domain with at least one dot"))
    if spec.get("scope") not in ("Cluster", "Namespaced"):
        errors.append(fe.not_supported("spec.scope", spec.get("scope"), ["Cluster", "Namespaced"]))
    for key in ("plural", "singular"):
        if names.get(key) and not DNS_1035.match(names[key]):
            errors.append(fe.invalid(f"spec.names.{key}", names[key], "a DNS-1035 label"))
    versions = spec.get("versions") or []
    if sum(1 for v in versions if v.get("storage")) != 1:
        errors.append(
            fe.invalid(
                "spec.versions",
                [v.get("name") for v in versions],
                "must have exactly one version marked as storage version",
            )
        )
    return errors


def check_schema(schema: Schema, path: str, has_status: bool = False) -> list[fe.FieldError]:
    """The rules on one version's ``openAPIV3Schema`` rooted at ``path``."""
    errors: list[fe.FieldError] = []
    if schema.get("nullable"):
        # VALIDATION: validateCustomResourceDefinitionValidation.
        errors.append(fe.forbidden(path + ".nullable", "nullable cannot be true at the root"))
    if has_status:
        # VALIDATION: only allowedFieldsAtRootSchema at the root with a status subresource.
        extra = sorted(set(schema) - ROOT_FIELDS_WITH_STATUS)
        if extra:
            errors.append(
                fe.invalid(
                    path,
                    extra,
                    "only "
                    + str(sorted(ROOT_FIELDS_WITH_STATUS))
                    + " fields are allowed at the root of the schema if the status subresource is enabled",
                )
            )
    errors += list(_node(schema, path, ROOT, in_meta=False, defaults_forbidden=""))
    return errors


def _node(
    s: Schema, path: str, level: str, in_meta: bool, defaults_forbidden: str
) -> Iterator[fe.FieldError]:
    if not isinstance(s, Mapping):
        yield fe.invalid(path, s, "must be a schema object")
        return
    yield from _standard(s, path, defaults_forbidden)
    yield from _structural(s, path, level)
    yield from _lists(s, path)
    yield from _default(s, path)
    props = s.get("properties") or {}
    additional = s.get("additionalProperties")
    if additional is not None:
        if props and (additional is False or isinstance(additional, Mapping)):
            # VALIDATION: "additionalProperties and properties are mutual exclusive", because
            # Kubernetes' API convention ignores (prunes) unknown fields instead.
            yield fe.forbidden(
                path + ".additionalProperties",
                "additionalProperties and properties are mutual exclusive",
            )
        if isinstance(additional, Mapping):
            reason = (
                "inside additionalProperties applying to object metadata"
                if in_meta
                else defaults_forbidden
            )
            yield from _node(additional, path + ".additionalProperties", FIELD, in_meta, reason)
    for name, sub in props.items():
        child = f"{path}.properties[{name}]"
        meta = level == ROOT and name in ("metadata", "apiVersion", "kind")
        reason = f"in top-level {name}" if meta else defaults_forbidden
        yield from _node(sub, child, FIELD, in_meta or meta, reason)
    items = s.get("items")
    if isinstance(items, list):
        # VALIDATION and CONVERT: one schema, never a tuple of schemas.
        yield fe.forbidden(path + ".items", "items must be a schema object and not an array")
    elif isinstance(items, Mapping):
        yield from _node(items, path + ".items", ITEM, in_meta, defaults_forbidden)
    for junctor in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(s.get(junctor) or []):
            yield from _nested(sub, f"{path}.{junctor}[{i}]", s)
    if isinstance(s.get("not"), Mapping):
        yield from _nested(s["not"], path + ".not", s)


def _standard(s: Schema, path: str, defaults_forbidden: str) -> Iterator[fe.FieldError]:
    """VALIDATION: specStandardValidatorV3.validate and the per-node checks beside it."""
    kind = s.get("type")
    if kind == "null":
        yield fe.forbidden(
            path + ".type", "type cannot be set to null, use nullable as an alternative"
        )
    elif kind is not None and kind not in TYPES:
        yield fe.not_supported(path + ".type", kind, list(TYPES))
    for keyword, detail in UNSUPPORTED.items():
        if keyword in s:
            yield fe.forbidden(f"{path}.{keyword}", detail)
    if s.get("uniqueItems") is True:
        yield fe.forbidden(
            path + ".uniqueItems",
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
        )
    if "default" in s and defaults_forbidden:
        yield fe.forbidden(path + ".default", "must not be set " + defaults_forbidden)
    if s.get("x-kubernetes-preserve-unknown-fields") is False:
        yield fe.invalid(
            path + ".x-kubernetes-preserve-unknown-fields", False, "must be true or undefined"
        )
    map_type = s.get("x-kubernetes-map-type")
    if map_type is not None:
        if kind != "object":
            yield _must_be(path, kind, "object", "x-kubernetes-map-type is specified")
        if map_type not in ("atomic", "granular"):
            yield fe.not_supported(
                path + ".x-kubernetes-map-type", map_type, ["atomic", "granular"]
            )
    for i, rule in enumerate(s.get("x-kubernetes-validations") or []):
        where = f"{path}.x-kubernetes-validations[{i}]"
        text, message = str(rule.get("rule") or "").strip(), rule.get("message")
        if not text:
            yield fe.required(where + ".rule", "rule is not specified")
        elif message is not None and not str(message).strip():
            yield fe.invalid(where + ".message", message, "message must be non-empty if specified")
        elif message and re.search(r"[\n\r]", str(message).strip()):
            yield fe.invalid(where + ".message", message, "message must not contain line breaks")
        elif re.search(r"[\n\r]", text) and not message:
            yield fe.required(
                where + ".message", "message must be specified if rule contains line breaks"
            )
    if "pattern" in s:
        try:
            re.compile(str(s["pattern"]))
        except re.error as exc:
            # STRUCTURAL: validateValueValidation compiles the pattern (Go RE2 there).
            yield fe.invalid(
                path + ".pattern",
                s["pattern"],
                f"must be a valid regular expression, but isn't: {exc}",
            )


def _must_be(path: str, kind: Any, wanted: str, why: str) -> fe.FieldError:
    if kind is None:
        return fe.required(path + ".type", f"must be {wanted} if {why}")
    return fe.invalid(path + ".type", kind, f"must be {wanted} if {why}")


def _structural(s: Schema, path: str, level: str) -> Iterator[fe.FieldError]:
    """STRUCTURAL: validateStructuralInvariants and validateExtensions."""
    kind = s.get("type")
    int_or_string = bool(s.get("x-kubernetes-int-or-string"))
    preserve = bool(s.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(s.get("x-kubernetes-embedded-resource"))
    if kind == "array" and "items" not in s:
        yield fe.required(path + ".items", "must be specified")
    if level == ROOT and "additionalProperties" in s:
        yield fe.forbidden(path + ".additionalProperties", "must not be used at the root")
    if int_or_string and preserve:
        yield fe.invalid(
            path + ".x-kubernetes-preserve-unknown-fields",
            True,
            "must be false if x-kubernetes-int-or-string is true",
        )
    if int_or_string and embedded:
        yield fe.invalid(
            path + ".x-kubernetes-embedded-resource",
            True,
            "must be false if x-kubernetes-int-or-string is true",
        )
    if embedded and kind != "object":
        yield _must_be(path, kind, "object", "x-kubernetes-embedded-resource is true")
    elif kind is None and not int_or_string and not preserve:
        # Every node says what it is, unless it is an int-or-string or keeps unknown fields.
        where = {
            ROOT: "must not be empty at the root",
            ITEM: "must not be empty for specified array items",
            FIELD: "must not be empty for specified object fields",
        }[level]
        yield fe.required(path + ".type", where)
    if embedded and "additionalProperties" in s:
        yield fe.forbidden(
            path + ".additionalProperties",
            "must not be used if x-kubernetes-embedded-resource is set",
        )
    if embedded and not preserve and not s.get("properties"):
        yield fe.required(
            path + ".properties",
            "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
        )
    if level == ROOT and kind is not None and kind != "object":
        yield fe.invalid(path + ".type", kind, "must be object at the root")
    props = s.get("properties") or {}
    if level == ROOT or embedded:
        for name in ("kind", "apiVersion"):
            if name in props and props[name].get("type") != "string":
                yield fe.invalid(
                    f"{path}.properties[{name}].type", props[name].get("type"), "must be string"
                )
    if "metadata" in props:
        yield from _metadata(
            props["metadata"], f"{path}.properties[metadata]", level == ROOT or embedded, level
        )


def _metadata(s: Schema, path: str, check: bool, level: str) -> Iterator[fe.FieldError]:
    """STRUCTURAL: validateStructuralMetadataInvariants. At the root, metadata may be an
    object that restricts name and generateName, and nothing else."""
    if check and s.get("type") != "object":
        yield fe.invalid(path + ".type", s.get("type"), "must be object")
    if level != ROOT:
        return
    rest = {k: v for k, v in s.items() if k not in ("type", "default")}
    props = set(rest.pop("properties", None) or {})
    if props - {"name", "generateName"} or rest:
        yield fe.forbidden(
            path,
            "must not specify anything other than name and generateName, but metadata is implicitly specified",
        )


def _lists(s: Schema, path: str) -> Iterator[fe.FieldError]:
    """VALIDATION: the x-kubernetes-list-type and list-map-keys rules, and
    validateMapListKeysMapSet (keys required or defaulted, never nullable)."""
    list_type = s.get("x-kubernetes-list-type")
    keys = s.get("x-kubernetes-list-map-keys") or []
    kind = s.get("type")
    if list_type is not None and kind != "array":
        yield _must_be(path, kind, "array", "x-kubernetes-list-type is specified")
    if list_type is not None and list_type not in ("atomic", "set", "map"):
        yield fe.not_supported(
            path + ".x-kubernetes-list-type", list_type, ["atomic", "set", "map"]
        )
    if keys and list_type is None:
        yield fe.required(
            path + ".x-kubernetes-list-type",
            "must be map if x-kubernetes-list-map-keys is non-empty",
        )
    elif keys and list_type != "map":
        yield fe.invalid(
            path + ".x-kubernetes-list-type",
            list_type,
            "must be map if x-kubernetes-list-map-keys is non-empty",
        )
    items = s.get("items")
    if list_type in ("set", "map") and isinstance(items, Mapping) and items.get("nullable"):
        yield fe.forbidden(
            path + ".items.nullable",
            f"cannot be nullable when x-kubernetes-list-type is {list_type}",
        )
    if list_type != "map":
        return
    if not keys:
        yield fe.required(
            path + ".x-kubernetes-list-map-keys",
            "must not be empty if x-kubernetes-list-type is map",
        )
    if items is None:
        yield fe.required(path + ".items", "must have a schema if x-kubernetes-list-type is map")
        return
    if not isinstance(items, Mapping):
        yield fe.invalid(
            path + ".items",
            items,
            "must only have a single schema if x-kubernetes-list-type is map",
        )
        return
    if items.get("type") != "object":
        yield fe.invalid(
            path + ".items.type",
            items.get("type"),
            "must be object if parent array's x-kubernetes-list-type is map",
        )
        return
    props = items.get("properties") or {}
    required = set(items.get("required") or [])
    for i, key in enumerate(keys):
        if key in keys[:i]:
            yield fe.invalid(
                path + ".x-kubernetes-list-map-keys", keys, "must not contain duplicate entries"
            )
        if key not in props:
            yield fe.invalid(
                path + ".x-kubernetes-list-map-keys",
                keys,
                "entries must all be names of item properties",
            )
            continue
        if props[key].get("type") in ("array", "object"):
            yield fe.invalid(
                f"{path}.items.properties[{key}].type",
                "object",
                "must be a scalar type if parent array's x-kubernetes-list-type is map",
            )
        if key not in required and "default" not in props[key]:
            yield fe.required(
                f"{path}.items.properties[{key}].default",
                "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property",
            )
        if props[key].get("nullable"):
            yield fe.forbidden(
                f"{path}.items.properties[{key}].nullable",
                "this property is in x-kubernetes-list-map-keys, so it cannot be nullable",
            )


def _default(s: Schema, path: str) -> Iterator[fe.FieldError]:
    """DEFAULTS: a default validates against its own schema and has nothing pruning drops."""
    if "default" not in s:
        return
    value = s["default"]
    pruned, unknown = crschema.prune(value, s)
    for field in unknown:
        yield fe.invalid(path + ".default", value, f'unknown field "{field}"')
    for error in crschema.validate(pruned, s, path + ".default"):
        yield fe.invalid(path + ".default", value, error.body())
    for i, option in enumerate(s.get("enum") or []):
        # VALIDATION: validateSchema checks each enum value against the schema too.
        bare = {k: v for k, v in s.items() if k not in ("enum", "default")}
        for error in crschema.validate(option, bare, f"{path}.enum[{i}]"):
            yield fe.invalid(f"{path}.enum[{i}]", option, error.body())


def _nested(s: Any, path: str, parent: Schema) -> Iterator[fe.FieldError]:
    """STRUCTURAL: value validations under a junctor only restrict; they declare nothing."""
    if not isinstance(s, Mapping):
        return
    int_or_string_any_of = parent.get("x-kubernetes-int-or-string") and path.endswith(
        ("anyOf[0]", "anyOf[1]")
    )
    for keyword, detail in NESTED_FORBIDDEN.items():
        if keyword == "type" and int_or_string_any_of:
            continue  # the two IntOrString exceptions (anyOf: [integer, string])
        if keyword in s and s[keyword] not in (False, None, "", [], {}):
            yield fe.forbidden(f"{path}.{keyword}", detail)
    if "metadata" in (s.get("properties") or {}):
        yield fe.forbidden(
            f"{path}.properties[metadata]", "must not be specified in a nested context"
        )
    for name, sub in (s.get("properties") or {}).items():
        yield from _nested(sub, f"{path}.properties[{name}]", {})
    if isinstance(s.get("items"), Mapping):
        yield from _nested(s["items"], path + ".items", {})

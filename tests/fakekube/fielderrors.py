"""Field errors and the 422 Invalid Status the API server builds from them.

The text follows k8s.io/apimachinery: ``pkg/util/validation/field/errors.go`` (``Error.Error``
is ``<field>: <body>``; the body is the type, then ``: <value>`` for value errors, then
``: <detail>``) and ``pkg/api/errors/errors.go`` (``NewInvalid``: ``<Kind.group> "<name>" is
invalid: <errors>``, one error bare, several in ``[a, b]``, each also a ``details.causes`` entry
with the type's reason such as ``FieldValueForbidden``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# field.ErrorType → (its String(), the cause reason (metav1.CauseType) it maps to).
TYPES = {
    "Required": ("Required value", "FieldValueRequired"),
    "Forbidden": ("Forbidden", "FieldValueForbidden"),
    "Invalid": ("Invalid value", "FieldValueInvalid"),
    "NotSupported": ("Unsupported value", "FieldValueNotSupported"),
    "Duplicate": ("Duplicate value", "FieldValueDuplicate"),
    "TooLong": ("Too long", "FieldValueTooLong"),
    "TooMany": ("Too many", "FieldValueTooMany"),
    "TypeInvalid": ("Invalid value", "FieldValueTypeInvalid"),
}
# The types whose body carries no value (Required, Forbidden, TooLong, TooMany in errors.go).
NO_VALUE = {"Required", "Forbidden", "TooLong", "TooMany"}
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class FieldError:
    field: str
    type: str
    detail: str = ""
    value: Any = _MISSING

    def body(self) -> str:
        text = TYPES[self.type][0]
        if self.type not in NO_VALUE and self.value is not _MISSING:
            text += ": " + _value(self.value)
        if self.detail:
            text += ": " + self.detail
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, str]:
        return {"reason": TYPES[self.type][1], "message": self.body(), "field": self.field}


def required(field: str, detail: str = "") -> FieldError:
    return FieldError(field, "Required", detail)


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError(field, "Forbidden", detail)


def invalid(field: str, value: Any, detail: str) -> FieldError:
    return FieldError(field, "Invalid", detail, value)


def not_supported(field: str, value: Any, supported: list[Any]) -> FieldError:
    detail = "supported values: " + ", ".join(_value(v) for v in supported)
    return FieldError(field, "NotSupported", detail, value)


def invalid_status(kind: str, group: str, name: str, errors: list[FieldError]) -> dict[str, Any]:
    """The Status body of a 422 for ``errors`` on object ``name`` (errors.NewInvalid)."""
    qualified = f"{kind}.{group}" if group else kind
    listed = [str(error) for error in errors]
    text = listed[0] if len(listed) == 1 else "[" + ", ".join(listed) + "]"
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{qualified} "{name}" is invalid: {text}',
        "reason": "Invalid",
        "details": {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [error.cause() for error in errors],
        },
        "code": 422,
    }


def _value(value: Any) -> str:
    # Go prints strings quoted and other values with %#v; JSON is close enough for both.
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else json.dumps(value)

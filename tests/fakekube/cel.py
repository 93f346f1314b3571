"""``x-kubernetes-validations`` rules, evaluated with cel-python (``celpy``).

kube-apiserver compiles each rule when the CRD is written and evaluates it on every create and
update, with ``self`` bound to the value at the rule's node
(``staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel/validation.go``,
``Validator.Validate``). A rule that yields false is reported at its node (plus its
``fieldPath``) as ``Invalid value: "<type>": <message>``, the message defaulting to
``failed rule: <rule>``.

Limits, stated rather than hidden: transition rules (those naming ``oldSelf``) are not
evaluated; nor is a rule cel-python cannot compile (one using a Kubernetes CEL library
function such as ``isURL`` or ``quantity``): such rules are listed by ``unsupported`` so a test
can prove the project's own CRDs have none.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import celpy
from celpy import adapter, celparser

from tests.fakekube import fielderrors as fe


@functools.cache
def _program(rule: str) -> Any:
    """The compiled rule, or None when cel-python cannot compile it."""
    env = celpy.Environment()
    try:
        return env.program(env.compile(rule))
    except celparser.CELParseError:
        return None
    except Exception:  # cel-python raises assorted errors for functions it lacks
        return None


def unsupported(rule: Mapping[str, Any]) -> str | None:
    """Why the fake leaves ``rule`` unevaluated, or None when it evaluates it."""
    text = str(rule.get("rule") or "")
    if "oldSelf" in text:
        return "a transition rule (oldSelf)"
    if _program(text) is None:
        return "cel-python cannot compile it"
    return None


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def check(value: Any, rules: list[Mapping[str, Any]], where: str) -> list[fe.FieldError]:
    errors: list[fe.FieldError] = []
    for rule in rules:
        if unsupported(rule):
            continue
        text = str(rule["rule"])
        path = where + str(rule.get("fieldPath") or "")
        message = str(rule.get("message") or f"failed rule: {text}")
        try:
            result = _program(text).evaluate({"self": adapter.json_to_cel(value)})
        except Exception as exc:  # celpy raises some evaluation errors and returns others
            result = exc
        if isinstance(result, Exception):
            # An evaluation error fails the request, as in Kubernetes.
            detail = f"rule evaluation error: {result}"
            errors.append(fe.invalid(path, _type_name(value), detail))
        elif not bool(result):
            errors.append(fe.invalid(path, _type_name(value), message))
    return errors

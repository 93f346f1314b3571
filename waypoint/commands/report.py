"""Warnings about the input world, worded the same by every command that translates it.

A schema problem reads ``warning: HTTPRoute demo/echo: spec.rules[0].backendRef: unknown field
(did you mean backendRefs?)``; any other rejected condition reads ``warning: <ref>:
<type>=<reason>: <message>``.
"""

from __future__ import annotations

from typing import TextIO

from waypoint import model
from waypoint.translate import schemacheck


def lines(ref: model.ObjectRef, cond: model.Condition) -> list[str]:
    """The warning lines for one False condition (a schema condition holds one per problem)."""
    if cond.type == schemacheck.SCHEMA_VALID:
        where = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
        return [f"warning: {ref.kind} {where}: {m}" for m in cond.message.split("; ")]
    return [f"warning: {describe(ref, cond)}"]


def describe(ref: model.ObjectRef, cond: model.Condition) -> str:
    """One False condition of one object, as every command prints it."""
    return f"{ref}: {cond.type}={cond.reason}: {cond.message}"


def failed(status: model.ResourceStatus) -> list[model.Condition]:
    """The object's False conditions and its parents', a route's schema problems once."""
    found = [c for c in status.conditions if not c.status]
    for parent in status.parents:
        # A route's schema problems are repeated on each parent; its own copy is enough.
        found += [
            c for c in parent.conditions if not c.status and c.type != schemacheck.SCHEMA_VALID
        ]
    return found


def statuses(found: tuple[model.ResourceStatus, ...], stream: TextIO) -> int:
    """Print every rejected condition and schema problem; return how many objects had one."""
    bad = 0
    for status in found:
        conditions = failed(status)
        bad += bool(conditions)
        for cond in conditions:
            for line in lines(status.ref, cond):
                print(line, file=stream)
    return bad


def schema_problems(found: tuple[model.ResourceStatus, ...], stream: TextIO) -> int:
    """Print only the schema problems; return how many objects had one."""
    bad = 0
    for status in found:
        for cond in status.conditions:
            if cond.type == schemacheck.SCHEMA_VALID and not cond.status:
                bad += 1
                for line in lines(status.ref, cond):
                    print(line, file=stream)
    return bad

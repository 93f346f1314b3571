"""Typed reads from untyped Kubernetes YAML, failing with the path of the offending field.

Inputs are plain dicts from YAML, so any field may be missing or of the wrong type. These
helpers raise ``Bad`` naming the field (``spec.rules[2].matches[0].path.value``); the caller
catches it per object or per rule, turns it into a status condition and carries on, so one
malformed object never costs another object its config.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard


class Bad(ValueError):
    """A field is missing or ill-typed; the message names it."""


# YAML gives plain dicts and lists. Testing their exact type first skips the much slower ABC
# check (isinstance against Mapping/Sequence), which every field read would otherwise pay.
def is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    return type(value) is dict or isinstance(value, Mapping)


def is_list(value: Any) -> TypeGuard[Sequence[Any]]:
    return type(value) is list or (
        not isinstance(value, str | bytes) and isinstance(value, Sequence)
    )


def mapping(value: Any, path: str, *, required: bool = False) -> Mapping[str, Any]:
    if value is None:
        if required:
            raise Bad(f"{path} is required")
        return {}
    if not is_mapping(value):
        raise Bad(f"{path} must be a mapping, not {type(value).__name__}")
    return value


def seq(value: Any, path: str, *, required: bool = False) -> Sequence[Any]:
    if value is None:
        if required:
            raise Bad(f"{path} is required")
        return ()
    if not is_list(value):
        raise Bad(f"{path} must be a list, not {type(value).__name__}")
    return value


def string(value: Any, path: str) -> str:
    if value is None:
        raise Bad(f"{path} is required")
    if not isinstance(value, str):
        raise Bad(f"{path} must be a string, not {type(value).__name__}")
    return value


def opt_string(value: Any, path: str) -> str | None:
    return None if value is None else string(value, path)


def nonempty(value: Any, path: str) -> str:
    text = string(value, path)
    if not text:
        raise Bad(f"{path} must not be empty")
    return text


def integer(value: Any, path: str, low: int | None = None, high: int | None = None) -> int:
    if value is None:
        raise Bad(f"{path} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(f"{path} must be an integer, not {value!r}")
    if low is not None and value < low:
        raise Bad(f"{path} must be at least {low}, not {value}")
    if high is not None and value > high:
        raise Bad(f"{path} must be at most {high}, not {value}")
    return value


def opt_integer(
    value: Any, path: str, low: int | None = None, high: int | None = None
) -> int | None:
    return None if value is None else integer(value, path, low, high)


def port(value: Any, path: str) -> int:
    return integer(value, path, 1, 65535)


def string_map(value: Any, path: str) -> dict[str, str]:
    """Labels or annotations; scalar values are read as strings, as kubectl would quote them."""
    result: dict[str, str] = {}
    for key, item in mapping(value, path).items():
        if not isinstance(key, str):
            raise Bad(f"{path} has a non-string key {key!r}")
        if type(item) is not str and (isinstance(item, Mapping | list) or item is None):
            raise Bad(f"{path}.{key} must be a string")
        result[key] = str(item).lower() if isinstance(item, bool) else str(item)
    return result


def timestamp(value: Any) -> datetime.datetime | None:
    """A ``metadata.creationTimestamp`` as an aware datetime (UTC when it names no zone), or
    None when it is missing or unreadable: it only orders objects, so it never fails one."""
    if isinstance(value, datetime.datetime):  # YAML may already have parsed it
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)

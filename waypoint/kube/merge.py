"""A small strategic merge, for Istio-style per-kind overlays from a parametersRef ConfigMap.

Maps merge key by key, a ``null`` value deletes a key, lists of objects that all carry a
``name`` (containers, volumes, ports, env) merge item by item on that name, and any other
list replaces the original. That is the subset of Kubernetes' strategic merge patch that
customizing a generated Deployment or Service needs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` merged in; neither argument is modified."""
    result: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        elif isinstance(value, list) and _named(value) and _named(result.get(key)):
            result[key] = _merge_named(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _named(items: object) -> bool:
    return isinstance(items, list) and all(
        isinstance(item, Mapping) and "name" in item for item in items
    )


def _merge_named(base: list[Any], patch: list[Any]) -> list[Any]:
    merged = [copy.deepcopy(item) for item in base]
    index = {item["name"]: position for position, item in enumerate(merged)}
    for item in patch:
        position = index.get(item["name"])
        if position is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[position] = merge(merged[position], item)
    return merged

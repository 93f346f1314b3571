"""Server-side apply for the fake API server: field sets, ownership, conflicts and merging.

A field path is a tuple of map keys and list-item keys (``("k", field, value)``). Lists whose
items all carry ``name`` (containers, ports, volumes), ``type`` (conditions) or
``containerPort``/``port``/``uid`` are associative and merge item by item, as the real server
does for those lists; every other list is atomic. This is the part of structured-merge-diff
that the waypoint controller's objects exercise.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[Any, ...]
KEY_FIELDS = ("name", "type", "containerPort", "port", "uid")
# Metadata that identifies or is maintained by the server is never owned.
UNOWNED = {
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "resourceVersion"),
    ("metadata", "uid"),
    ("metadata", "generation"),
    ("metadata", "creationTimestamp"),
    ("metadata", "managedFields"),
    ("apiVersion",),
    ("kind",),
}


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        self.conflicts = conflicts
        super().__init__(
            "Apply failed with conflicts: "
            + "; ".join(
                f'conflict with "{_display(manager)}": {render(path)}'
                for manager, path in conflicts
            )
        )


def list_key(items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, Mapping) for item in items):
        return None
    for field in KEY_FIELDS:
        if all(field in item for item in items):
            return field
    return None


def fieldset(obj: Mapping[str, Any]) -> set[Path]:
    return {path for path in _walk(obj, ()) if path not in UNOWNED}


def _walk(value: Any, path: Path) -> Iterator[Path]:
    if isinstance(value, Mapping) and value:
        for key, child in value.items():
            yield from _walk(child, (*path, key))
        return
    if isinstance(value, list):
        field = list_key(value)
        if field is not None:
            for item in value:
                item_path = (*path, ("k", field, item[field]))
                yield item_path
                yield from _walk(item, item_path)
            return
    yield path


def get(obj: Any, path: Path) -> Any:
    current = obj
    for element in path:
        if isinstance(element, tuple):
            _, field, value = element
            current = next(
                (
                    item
                    for item in current or []
                    if isinstance(item, Mapping) and item.get(field) == value
                ),
                None,
            )
        elif isinstance(current, Mapping):
            current = current.get(element)
        else:
            return None
        if current is None:
            return None
    return current


def delete(obj: Any, path: Path) -> None:
    parent = get(obj, path[:-1]) if len(path) > 1 else obj
    last = path[-1]
    if isinstance(last, tuple) and isinstance(parent, list):
        _, field, value = last
        parent[:] = [
            item for item in parent if not (isinstance(item, Mapping) and item.get(field) == value)
        ]
    elif isinstance(parent, dict):
        parent.pop(last, None)
    # Maps emptied by the removal go too, as the real server prunes them.
    if len(path) > 1 and isinstance(parent, dict) and not parent:
        delete(obj, path[:-1])


def merge(live: Any, patch: Any) -> Any:
    if isinstance(live, Mapping) and isinstance(patch, Mapping):
        result = dict(copy.deepcopy(live))
        for key, value in patch.items():
            result[key] = merge(result[key], value) if key in result else copy.deepcopy(value)
        return result
    if isinstance(live, list) and isinstance(patch, list):
        field = list_key(patch)
        if field is not None and (list_key(live) == field or not live):
            merged = [copy.deepcopy(item) for item in live]
            for item in patch:
                index = next(
                    (i for i, old in enumerate(merged) if old.get(field) == item[field]), None
                )
                if index is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[index] = merge(merged[index], item)
            return merged
    return copy.deepcopy(patch)


def apply(
    live: dict[str, Any],
    patch: Mapping[str, Any],
    owners: dict[str, set[Path]],
    manager: str,
    force: bool,
) -> dict[str, Any]:
    """Apply ``patch`` as ``manager``; ``owners`` (manager → paths) is updated in place."""
    new_set = fieldset(patch)
    conflicts = [
        (other, path)
        for other, paths in sorted(owners.items())
        if other != manager
        for path in sorted(new_set & paths, key=render)
        if get(live, path) != get(patch, path)
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    for other, path in conflicts:
        owners[other].discard(path)
    result = copy.deepcopy(live)
    others = set().union(*(paths for other, paths in owners.items() if other != manager))
    for path in sorted(owners.get(manager, set()) - new_set - others, key=render, reverse=True):
        delete(result, path)
    owners[manager] = new_set
    merged: dict[str, Any] = merge(result, patch)
    return merged


def record_update(
    before: Mapping[str, Any], after: Mapping[str, Any], owners: dict[str, set[Path]], manager: str
) -> None:
    """An update (create, PUT, merge patch) owns the fields it changed, taking them from others."""
    changed = {path for path in fieldset(after) if get(before, path) != get(after, path)}
    for paths in owners.values():
        paths -= changed
    owners.setdefault(manager, set()).update(changed)
    for name in [name for name, paths in owners.items() if not paths]:
        del owners[name]


def render(path: Path) -> str:
    parts = []
    for element in path:
        if isinstance(element, tuple):
            parts.append(f"[{element[1]}={element[2]}]")
        else:
            parts.append(f".{element}")
    return "".join(parts)


def fields_v1(paths: set[Path]) -> dict[str, Any]:
    """The FieldsV1 encoding the real server puts in ``metadata.managedFields``."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for element in path:
            if isinstance(element, tuple):
                key = "k:" + json.dumps({element[1]: element[2]}, separators=(",", ":"))
            else:
                key = f"f:{element}"
            node = node.setdefault(key, {})
        if path and isinstance(path[-1], tuple):
            node.setdefault(".", {})
    return tree


def _display(owner: str) -> str:
    """The manager's own name, without the fake server's operation/subresource suffixes."""
    return owner.split("#")[0].split("/")[0]

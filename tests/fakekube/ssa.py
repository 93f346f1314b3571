"""Server-side apply for the fake API server: field sets, ownership, conflicts and merging.

As in sigs.k8s.io/structured-merge-diff (the library behind kube-apiserver's apply), how a
list merges is the schema's to say: a list with ``x-kubernetes-list-type: map`` merges item by
item on its ``x-kubernetes-list-map-keys`` (containers by name, container ports by
containerPort and protocol, env by name, conditions by type); every other list is atomic, owned
and replaced as a whole. ``Lists`` maps a field path (field names, list items skipped) to its
keys; ``builtin.LIST_MAP_KEYS`` holds them for the built-in and Gateway API kinds and
``catalog.from_crd`` reads them from a CRD's schema. An empty tuple marks an atomic map or
struct (``+structType=atomic``, ``x-kubernetes-map-type: atomic``): a label selector is
replaced whole, never merged key by key.

A field path is a tuple of map keys and list-item keys, ``("k", ((field, value), ...))``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[Any, ...]
Lists = Mapping[tuple[str, ...], tuple[str, ...]]
# Key fields the schema defaults: an item that omits one is keyed by the default
# (Container.ports[].protocol and ServicePort.protocol default to TCP).
KEY_DEFAULTS = {"protocol": "TCP"}
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
# ObjectMeta's own associative list, for every kind.
META_LISTS: dict[tuple[str, ...], tuple[str, ...]] = {("metadata", "ownerReferences"): ("uid",)}


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        self.conflicts = conflicts
        super().__init__(
            "Apply failed with "
            + str(len(conflicts))
            + (" conflict: " if len(conflicts) == 1 else " conflicts: ")
            + "; ".join(
                f'conflict with "{_display(manager)}": {render(path)}'
                for manager, path in conflicts
            )
        )


class BadKeys(ValueError):
    """An item of an associative list lacks a key field, or two items share a key."""


def _schema_path(path: Path) -> tuple[str, ...]:
    return tuple(element for element in path if not isinstance(element, tuple))


def _keys_of(lists: Lists, path: Path) -> tuple[str, ...] | None:
    spath = _schema_path(path)
    return META_LISTS[spath] if spath in META_LISTS else lists.get(spath)


def item_key(item: Any, keys: tuple[str, ...], where: str = "") -> tuple[Any, ...]:
    if not isinstance(item, Mapping):
        raise BadKeys(f"{where}: associative list item is not an object")
    element = []
    for field in keys:
        value = item.get(field, KEY_DEFAULTS.get(field))
        if value is None:
            raise BadKeys(
                f'{where}: associative list with keys has an element that omits key field "{field}"'
            )
        element.append((field, value))
    return ("k", tuple(element))


def _matches(item: Any, element: tuple[Any, ...]) -> bool:
    return isinstance(item, Mapping) and all(
        item.get(field, KEY_DEFAULTS.get(field)) == value for field, value in element[1]
    )


def fieldset(obj: Mapping[str, Any], lists: Lists) -> set[Path]:
    return {path for path in _walk(obj, (), lists) if path not in UNOWNED}


def _walk(value: Any, path: Path, lists: Lists) -> Iterator[Path]:
    if _keys_of(lists, path) == ():
        yield path
        return
    if isinstance(value, Mapping) and value:
        for key, child in value.items():
            yield from _walk(child, (*path, key), lists)
        return
    if isinstance(value, list) and value:
        keys = _keys_of(lists, path)
        if keys is not None:
            seen: set[Any] = set()
            for item in value:
                item_path = (*path, item_key(item, keys, render(path)))
                if item_path[-1] in seen:
                    raise BadKeys(
                        f"{render(path)}: duplicate entries for key {render(item_path[-1:])}"
                    )
                seen.add(item_path[-1])
                yield item_path
                yield from _walk(item, item_path, lists)
            return
    yield path


def get(obj: Any, path: Path) -> Any:
    current = obj
    for element in path:
        if isinstance(element, tuple):
            current = next((item for item in current or [] if _matches(item, element)), None)
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
        parent[:] = [item for item in parent if not _matches(item, last)]
    elif isinstance(parent, dict):
        parent.pop(last, None)
    # Maps and lists emptied by the removal go too, as the real server prunes them.
    if len(path) > 1 and isinstance(parent, (dict, list)) and not parent:
        delete(obj, path[:-1])


def merge(live: Any, patch: Any, lists: Lists, path: Path = ()) -> Any:
    keys = _keys_of(lists, path)
    if isinstance(live, Mapping) and isinstance(patch, Mapping) and keys != ():
        result = dict(copy.deepcopy(live))
        for key, value in patch.items():
            child = (*path, key)
            result[key] = (
                merge(result[key], value, lists, child) if key in result else copy.deepcopy(value)
            )
        return result
    if isinstance(live, list) and isinstance(patch, list) and keys:
        merged = [copy.deepcopy(item) for item in live]
        for item in patch:
            element = item_key(item, keys, render(path))
            index = next((i for i, old in enumerate(merged) if _matches(old, element)), None)
            if index is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[index] = merge(merged[index], item, lists, (*path, element))
        return merged
    return copy.deepcopy(patch)


def apply(
    live: dict[str, Any],
    patch: Mapping[str, Any],
    owners: dict[str, set[Path]],
    manager: str,
    force: bool,
    lists: Lists,
) -> dict[str, Any]:
    """Apply ``patch`` as ``manager``; ``owners`` (manager → paths) is updated in place."""
    new_set = fieldset(patch, lists)
    conflicts = [
        (other, path)
        for other, paths in sorted(owners.items())
        if other != manager
        for path in sorted(new_set & paths, key=render)
        # Values conflict; an item's own entry (its key) is shared, as in structured-merge-diff.
        if not isinstance(path[-1], tuple) and get(live, path) != get(patch, path)
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    for other, path in conflicts:
        owners[other].discard(path)
    result = copy.deepcopy(live)
    others = set().union(*(paths for other, paths in owners.items() if other != manager))
    removed = owners.get(manager, set()) - new_set - others
    kept = others | new_set
    # A field or item goes unless someone still owns a field inside it; an item goes whole,
    # and the key fields of an item that stays stay with it.
    deletable = {path for path in removed if not any(_under(other, path) for other in kept)}
    for path in sorted(deletable, key=render, reverse=True):
        if not any(_under(path, other) for other in deletable) and not _is_key_field(path):
            delete(result, path)
    owners[manager] = new_set
    for name in [name for name, paths in owners.items() if not paths]:
        del owners[name]
    merged: dict[str, Any] = merge(result, patch, lists)
    return merged


def _is_key_field(path: Path) -> bool:
    return (
        len(path) >= 2
        and isinstance(path[-2], tuple)
        and any(field == path[-1] for field, _ in path[-2][1])
    )


def _under(path: Path, prefix: Path) -> bool:
    """``path`` is a field inside ``prefix`` (a list item someone else still owns part of)."""
    return len(path) > len(prefix) and path[: len(prefix)] == prefix


def record_update(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    owners: dict[str, set[Path]],
    manager: str,
    lists: Lists,
) -> None:
    """An update (create, PUT, merge patch) owns the fields it changed, taking them from others."""
    changed = {path for path in fieldset(after, lists) if get(before, path) != get(after, path)}
    gone = {
        path
        for paths in owners.values()
        for path in paths
        if get(after, path) is None and get(before, path) is not None
    }
    for paths in owners.values():
        paths -= changed | gone
    owners.setdefault(manager, set()).update(changed)
    for name in [name for name, paths in owners.items() if not paths]:
        del owners[name]


def render(path: Path) -> str:
    parts = []
    for element in path:
        if isinstance(element, tuple):
            keys = ",".join(f"{field}={json.dumps(value)}" for field, value in element[1])
            parts.append(f"[{keys}]")
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
                key = "k:" + json.dumps(dict(element[1]), separators=(",", ":"), sort_keys=True)
            else:
                key = f"f:{element}"
            node = node.setdefault(key, {})
        if path and isinstance(path[-1], tuple):
            node.setdefault(".", {})
    return tree


def _display(owner: str) -> str:
    """The manager's own name, without the fake server's operation/subresource suffixes."""
    return owner.split("#")[0].split("/")[0]

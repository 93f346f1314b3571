"""Reading the input world: multi-document Kubernetes YAML files (or directories of them).

The CLI and the xDS file source read their objects here; the pipeline they hand them to
(``waypoint.pipeline``) touches no file.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import yaml


class InputError(ValueError):
    """An input file could not be read as Kubernetes objects."""


def _documents(text: str, source: str) -> Iterable[dict[str, Any]]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {exc}") from exc
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise InputError(f"{source}: document {index} is not a Kubernetes object")
        if doc["kind"] == "List" or str(doc["kind"]).endswith("List"):
            yield from (item for item in doc.get("items") or [] if isinstance(item, dict))
        else:
            yield doc


def load_objects(paths: Sequence[str | pathlib.Path]) -> list[dict[str, Any]]:
    """Read multi-document YAML files (or directories of them) into a list of objects."""
    objects: list[dict[str, Any]] = []
    for path in paths:
        target = pathlib.Path(path)
        files = sorted(target.rglob("*.y*ml")) if target.is_dir() else [target]
        for file in files:
            try:
                text = file.read_text()
            except OSError as exc:
                raise InputError(f"{file}: {exc.strerror or exc}") from exc
            objects.extend(_documents(text, str(file)))
    return objects

"""A directory of Kubernetes YAML as an xDS source: translate and push on every change.

The watcher polls file sizes and modification times (no inotify needed, works on any
filesystem) and waits until a change has been quiet for ``debounce`` seconds, so an editor's
save-in-several-writes becomes one push. Each file is parsed on its own: a file that stops
parsing is reported and its last good objects are kept, so everything else still updates.
Objects that translate but are rejected (Gateway API conditions) are reported and left out
by the translator. Every accepted waypoint becomes one snapshot in the cache; a waypoint that
disappears gets an empty one. Unchanged waypoints produce identical snapshots, which the
cache does not push again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import threading
import time
from collections.abc import Mapping
from typing import Any

from waypoint import model, pipeline
from waypoint.envoy import options as envoy_options
from waypoint.runtime import collector, inputs
from waypoint.xds import cache, naming, publish

LOG = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")

Fingerprint = tuple[int, int]  # (mtime_ns, size)


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something in the directory that could not be used, and why."""

    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Reload:
    """What one reload did."""

    pushed: tuple[naming.WaypointKey, ...]
    unchanged: tuple[naming.WaypointKey, ...]
    removed: tuple[naming.WaypointKey, ...]
    problems: tuple[Problem, ...]
    translation: model.Translation | None
    seconds: float = 0.0


class FileSource:
    """Watch ``directory`` and keep ``snapshots`` in step with the YAML in it."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        snapshots: cache.SnapshotCache,
        options: envoy_options.BootstrapOptions,
        *,
        poll_interval: float = 0.1,
        debounce: float = 0.05,
        builder: publish.Builder = publish.build_snapshot,
    ) -> None:
        self.directory = pathlib.Path(directory)
        self.cache = snapshots
        self.options = options
        self.poll_interval = poll_interval
        self.debounce = debounce
        self.builder = builder
        self._seen: dict[pathlib.Path, Fingerprint] = {}
        self._objects: dict[pathlib.Path, tuple[Fingerprint, list[dict[str, Any]]]] = {}
        self._keys: set[naming.WaypointKey] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.last: Reload | None = None

    # --- one pass --------------------------------------------------------------------------

    def scan(self) -> dict[pathlib.Path, Fingerprint]:
        """The YAML files under the directory and their (mtime, size)."""
        found: dict[pathlib.Path, Fingerprint] = {}
        for path in sorted(self.directory.rglob("*")):
            if path.suffix not in SUFFIXES or path.name.startswith("."):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue  # removed between listing and stat
            if path.is_file():
                found[path] = (stat.st_mtime_ns, stat.st_size)
        return found

    def reload(self, files: Mapping[pathlib.Path, Fingerprint] | None = None) -> Reload:
        """Read what changed, translate everything, and push the waypoints that changed."""
        with collector.paused():
            return self._reload(files)

    def _reload(self, files: Mapping[pathlib.Path, Fingerprint] | None) -> Reload:
        started = time.perf_counter()
        files = self.scan() if files is None else files
        problems = list(self._load(files))
        objects = [obj for path in sorted(self._objects) for obj in self._objects[path][1]]
        translation = pipeline.translate_objects(objects, self.options.trust_domain)
        problems += _rejections(translation)
        published = publish.publish(
            self.cache, translation.waypoints, self.options, self._keys, self.builder
        )
        problems += [Problem(f"Gateway/{key}", why) for key, why in published.failed]
        self._keys = set(published.published)
        self.reloads += 1
        for problem in problems:
            LOG.warning("xds: %s", problem)
        seconds = time.perf_counter() - started
        LOG.info(
            "xds: reloaded %s in %.0f ms: %d pushed, %d unchanged, %d removed, %d problems",
            self.directory,
            seconds * 1000,
            len(published.pushed),
            len(published.unchanged),
            len(published.removed),
            len(problems),
        )
        self.last = Reload(
            published.pushed,
            published.unchanged,
            published.removed,
            tuple(problems),
            translation,
            seconds,
        )
        return self.last

    def _load(self, files: Mapping[pathlib.Path, Fingerprint]) -> list[Problem]:
        problems: list[Problem] = []
        for path in [p for p in self._objects if p not in files]:
            del self._objects[path]
        for path, fingerprint in files.items():
            cached = self._objects.get(path)
            if cached is not None and cached[0] == fingerprint:
                continue
            try:
                loaded = inputs.load_objects([path])
            except inputs.InputError as exc:
                kept = " (keeping its last good objects)" if cached is not None else ""
                problems.append(Problem(str(path), f"{exc}{kept}"))
                continue
            self._objects[path] = (fingerprint, loaded)
        self._seen = dict(files)
        return problems

    # --- watching --------------------------------------------------------------------------

    def poll(self) -> Reload | None:
        """Reload if the directory changed and then stayed quiet for ``debounce``."""
        current = self.scan()
        if current == self._seen:
            return None
        while True:
            time.sleep(self.debounce)
            settled = self.scan()
            if settled == current:
                break
            current = settled
        return self.reload(current)

    def start(self) -> FileSource:
        """Load once (synchronously, so the cache is ready), then watch in a thread."""
        self.reload()
        self._thread = threading.Thread(target=self._watch, name="xds-files", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception:
                LOG.exception("xds: reloading %s failed", self.directory)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def _rejections(translation: model.Translation) -> list[Problem]:
    problems: list[Problem] = []
    for status in translation.statuses:
        problems += [
            Problem(str(status.ref), f"{c.type}={c.reason}: {c.message}") for c in status.failed
        ]
    return problems

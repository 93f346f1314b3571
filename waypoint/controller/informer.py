"""List-then-watch with a local cache, resuming after 410 Gone or a dropped connection.

An ``Informer`` keeps ``store`` in step with one kind and calls ``on_change(old, new)`` for every
add, update and delete (``None`` for the missing side). The watch restarts from the last seen
resourceVersion (BOOKMARKs advance it) when the server ends it; a 410 means the history is gone,
so it relists and reports what changed in between; any other error backs off and retries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from waypoint.controller import cluster as kcluster
from waypoint.controller import metrics as kmetrics

LOG = logging.getLogger(__name__)
Obj = dict[str, Any]
Key = tuple[str, str]
Handler = Callable[[Obj | None, Obj | None], None]
# Applied to every object before it is stored: keeps only what the controller reads.
Transform = Callable[[Obj], Obj]


def object_key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Informer:
    def __init__(
        self,
        cluster: kcluster.Cluster,
        kind: kcluster.Kind,
        on_change: Handler,
        metrics: kmetrics.Metrics,
        label_selector: str | None = None,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
        transform: Transform | None = None,
    ) -> None:
        self.cluster = cluster
        self.kind = kind
        self.on_change = on_change
        self.metrics = metrics
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.transform = transform
        self.store: dict[Key, Obj] = {}
        self.synced = threading.Event()
        self.resource_version = ""
        self.relists = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind.kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def items(self) -> list[Obj]:
        with self._lock:
            return [self.store[key] for key in sorted(self.store)]

    def _run(self) -> None:
        failures = 0
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                self._watch_once()
                failures = 0
                self.metrics.watch_restarts.labels(self.kind.kind, "timeout").inc()
            except kcluster.Gone:
                LOG.info("watch %s expired; relisting", self.kind)
                self.metrics.watch_restarts.labels(self.kind.kind, "expired").inc()
                need_list = True
            except Exception as exc:  # any transport error: back off, then resume
                failures += 1
                delay = min(0.1 * 2**failures, self.max_backoff)
                LOG.warning("watch %s failed (%s); retrying in %.1fs", self.kind, exc, delay)
                self.metrics.watch_restarts.labels(self.kind.kind, "error").inc()
                self._stop.wait(delay)

    def _relist(self) -> None:
        items, rv = self.cluster.list(self.kind, label_selector=self.label_selector)
        if self.transform is not None:
            items = [self.transform(item) for item in items]
        fresh = {object_key(item): item for item in items}
        with self._lock:
            old = self.store
            self.store = fresh
            self.resource_version = rv
        self.relists += 1
        for key in sorted(set(old) | set(fresh)):
            before, after = old.get(key), fresh.get(key)
            if before != after:
                self.on_change(before, after)
        self.synced.set()

    def _watch_once(self) -> None:
        for event_type, obj in self.cluster.watch(
            self.kind, self.resource_version, self.watch_timeout, label_selector=self.label_selector
        ):
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if event_type == "BOOKMARK":
                self.resource_version = rv or self.resource_version
            else:
                self._apply_event(event_type, self.transform(obj) if self.transform else obj, rv)
            if self._stop.is_set():
                return

    def _apply_event(self, event_type: str, obj: Obj, rv: str) -> None:
        key = object_key(obj)
        with self._lock:
            before = self.store.get(key)
            if event_type == "DELETED":
                self.store.pop(key, None)
                after = None
            else:
                self.store[key] = obj
                after = obj
            if rv:
                self.resource_version = rv
        self.on_change(before, after)

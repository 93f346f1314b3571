"""List-then-watch with a local cache, resuming after 410 Gone or a dropped connection.

An ``Informer`` keeps ``store`` in step with one kind and calls ``on_change(old, new)`` for every
add, update and delete (``None`` for the missing side). The watch restarts from the last seen
resourceVersion (BOOKMARKs advance it) when the server ends it; a 410 means the history is gone,
so it relists and reports what changed in between; any other error backs off (exponentially,
with jitter, so replicas and kinds do not retry in lockstep) and retries. Each watch asks the
server to end it after a randomized ``watch_timeout``..2x, as client-go's reflector does.

An ``optional`` kind (one the controller works without) that the server does not serve (404)
or does not let us list (403) counts as synced and empty: its objects leave the store (each
reported as deleted), ``unavailable`` says why, and the list is retried every
``optional_retry`` seconds, so a CRD installed or a Role fixed later is picked up.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from waypoint.controller import apiclient
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
        cluster: apiclient.Cluster,
        kind: apiclient.Kind,
        on_change: Handler,
        metrics: kmetrics.Metrics,
        label_selector: str | None = None,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
        optional: bool = False,
        optional_retry: float = 60.0,
        on_availability: Callable[[], None] | None = None,
        significant: Callable[[Obj | None, Obj | None], bool] | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.cluster = cluster
        self.kind = kind
        self.on_change = on_change
        self.metrics = metrics
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.optional = optional
        self.optional_retry = optional_retry
        self.on_availability = on_availability
        # Why this optional kind is left out of the world (None while it is listed and watched).
        self.unavailable: str | None = None
        self.store: dict[Key, Obj] = {}
        # Bumped on every change ``significant`` judges to matter (default: every change).
        self.version = 0
        self.significant = significant
        # Applied to every object before it is stored: keep only the fields readers need.
        self.transform = transform
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

    def cached(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self.store.get((namespace, name))

    @property
    def ready(self) -> bool:
        """Synced, and listing this kind works: the store can answer for it."""
        return self.synced.is_set() and self.unavailable is None

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
            except apiclient.Gone:
                LOG.info("watch %s expired; relisting", self.kind)
                self.metrics.watch_restarts.labels(self.kind.kind, "expired").inc()
                need_list = True
            except (apiclient.MissingKind, apiclient.Forbidden) as exc:
                if not self.optional:
                    failures = self._back_off(failures, exc)
                    continue
                self._set_unavailable(str(exc))
                need_list = True
                self._stop.wait(self.optional_retry * random.uniform(1.0, 1.5))
            except Exception as exc:  # any transport error: back off, then resume
                failures = self._back_off(failures, exc)

    def _back_off(self, failures: int, exc: Exception) -> int:
        """Wait 0.1 s * 2^failures (capped), scaled by a random 0.5..1 (jitter)."""
        failures += 1
        delay = min(0.1 * 2**failures, self.max_backoff) * random.uniform(0.5, 1.0)
        LOG.warning("watch %s failed (%s); retrying in %.1fs", self.kind, exc, delay)
        self.metrics.watch_restarts.labels(self.kind.kind, "error").inc()
        self._stop.wait(delay)
        return failures

    def _set_unavailable(self, reason: str) -> None:
        """Leave this optional kind out of the world: empty the store, count it as synced."""
        if self.unavailable is None:
            LOG.warning("%s is left out of the world: %s", self.kind, reason)
        changed = self.unavailable != reason
        with self._lock:
            old = self.store
            self.store = {}
            self.resource_version = ""
            self.unavailable = reason
            if old:
                self.version += 1
        for key in sorted(old):
            self.on_change(old[key], None)
        self.synced.set()
        if changed and self.on_availability is not None:
            self.on_availability()

    def _relist(self) -> None:
        items, rv = self.cluster.list(self.kind, label_selector=self.label_selector)
        items = [self._keep(item) for item in items]
        fresh = {object_key(item): item for item in items}
        with self._lock:
            old = self.store
            self.store = fresh
            self.resource_version = rv
            was_unavailable, self.unavailable = self.unavailable, None
            if old != fresh:
                self.version += 1
        self.relists += 1
        for key in sorted(set(old) | set(fresh)):
            before, after = old.get(key), fresh.get(key)
            if before != after:
                self.on_change(before, after)
        self.synced.set()
        if was_unavailable is not None:
            LOG.info("%s is available again", self.kind)
            if self.on_availability is not None:
                self.on_availability()

    def _watch_once(self) -> None:
        # Randomized, as client-go's reflector does, so watches do not all restart at once.
        timeout = random.randint(self.watch_timeout, 2 * self.watch_timeout)
        for event_type, obj in self.cluster.watch(
            self.kind, self.resource_version, timeout, label_selector=self.label_selector
        ):
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if event_type == "BOOKMARK":
                self.resource_version = rv or self.resource_version
            else:
                self._apply_event(event_type, self._keep(obj), rv)
            if self._stop.is_set():
                return

    def _keep(self, obj: Obj) -> Obj:
        """What the store keeps of ``obj``: never its managedFields, which nothing here reads
        and which are often the bulk of an object (client-go's TransformStripManagedFields),
        then whatever ``transform`` keeps."""
        meta = obj.get("metadata")
        if isinstance(meta, dict) and "managedFields" in meta:
            obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
        return self.transform(obj) if self.transform is not None else obj

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
            if self.significant is None or self.significant(before, after):
                self.version += 1
        self.on_change(before, after)


class CacheReader:
    """Reads served from informer stores instead of GETs; a ``reconcile.Reader``.

    ``complete`` kinds are watched in full, so a miss means the object does not exist. The
    others are watched through a label selector (our managed-by label): a miss may be an object
    without that label, which only a GET can tell apart from no object, and ``owned`` (used
    to find what to prune, which must be ours anyway) answers None without asking.
    """

    def __init__(self, cluster: apiclient.Cluster) -> None:
        self.cluster = cluster
        self._informers: dict[apiclient.Kind, list[tuple[Informer, bool]]] = {}

    def add(self, informer: Informer, complete: bool) -> None:
        self._informers.setdefault(informer.kind, []).append((informer, complete))

    def get(self, kind: apiclient.Kind, namespace: str, name: str) -> Obj | None:
        informers = [(i, c) for i, c in self._informers.get(kind, []) if i.ready]
        for informer, complete in informers:
            found = informer.cached(namespace, name)
            if found is not None or complete:
                return found
        return self.cluster.get(kind, namespace, name)

    def owned(self, kind: apiclient.Kind, namespace: str, name: str) -> Obj | None:
        informers = [i for i, _ in self._informers.get(kind, []) if i.ready]
        if not informers:
            return self.cluster.get(kind, namespace, name)
        for informer in informers:
            found = informer.cached(namespace, name)
            if found is not None:
                return found
        return None

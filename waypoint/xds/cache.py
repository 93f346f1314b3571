"""The snapshot cache: what each waypoint's Envoys should run, and what they made of it.

Sources (the file watcher, the controller) call :meth:`SnapshotCache.set`; ADS streams read
:meth:`SnapshotCache.get` and are woken through :meth:`SnapshotCache.watch`. Streams report back:
:meth:`SnapshotCache.report_applied` when an Envoy has acknowledged a whole snapshot (it becomes
the waypoint's *last good* one) and :meth:`SnapshotCache.report_nack` when an Envoy rejected part
of it. On a rejection the cache serves the last good snapshot again, so every Envoy of that
waypoint converges back to it, and remembers the rejected version so that the same content is
never pushed again; the error goes to a metric, a log line and the status callbacks (the
controller writes it to the Gateway's status).

The cache is thread-safe: sources may run in other threads than the server's event loop.
Callbacks run in the caller's thread, outside the lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from waypoint.xds import metrics, naming, snapshot

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Nack:
    """One Envoy's rejection of one pushed resource type."""

    key: naming.WaypointKey
    node_id: str
    type_url: str
    version: str
    snapshot_version: str
    message: str


@dataclasses.dataclass(frozen=True)
class Status:
    """A waypoint's xDS state as the controller reports it.

    ``error`` is None once an Envoy has applied ``version`` in full; otherwise it is the
    rejection, and ``version`` is the last good snapshot still served ("" if there is none).
    """

    key: naming.WaypointKey
    version: str
    error: Nack | None


StatusCallback = Callable[[Status], None]


@dataclasses.dataclass
class _Entry:
    target: snapshot.Snapshot
    good: snapshot.Snapshot | None = None
    latest_version: str = ""
    rejected: dict[str, Nack] = dataclasses.field(default_factory=dict)
    watchers: dict[int, Callable[[], None]] = dataclasses.field(default_factory=dict)


class SnapshotCache:
    """Snapshots keyed by waypoint, with the last good one kept for rollback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[naming.WaypointKey, _Entry] = {}
        self._status_callbacks: list[StatusCallback] = []
        self._next_watch = 0

    # --- sources ---------------------------------------------------------------------------

    def set(self, key: naming.WaypointKey, snap: snapshot.Snapshot) -> bool:
        """Make ``snap`` the waypoint's desired config; False if nothing is pushed.

        Nothing is pushed when it equals what is served already, or when the same content
        was rejected before (the last good snapshot stays).
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(target=snap)
            elif entry.latest_version and snap.version == entry.target.version:
                entry.latest_version = snap.version
                return False
            elif snap.version in entry.rejected:
                entry.latest_version = snap.version
                LOG.warning(
                    "xds %s: snapshot %s was rejected before; still serving %s",
                    key,
                    snap.version,
                    entry.target.version,
                )
                return False
            else:
                entry.target = snap
            entry.latest_version = snap.version
            watchers = list(entry.watchers.values())
        metrics.SNAPSHOTS.labels(str(key)).inc()
        LOG.info("xds %s: snapshot %s (%d resources)", key, snap.version, snap.count())
        _call_all(watchers)
        return True

    def delete(self, key: naming.WaypointKey) -> bool:
        """The waypoint is gone: its Envoys get an empty config."""
        with self._lock:
            known = key in self._entries
        return self.set(key, snapshot.EMPTY) if known else False

    # --- streams ---------------------------------------------------------------------------

    def get(self, key: naming.WaypointKey) -> snapshot.Snapshot | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry.target if entry else None

    def waypoints(self) -> list[naming.WaypointKey]:
        with self._lock:
            return sorted(self._entries)

    def watch(self, key: naming.WaypointKey, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from any thread) whenever the key's snapshot changes; returns unwatch.

        Watching a key that has no snapshot yet is allowed: the first ``set`` wakes it.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(target=snapshot.EMPTY)
                entry.latest_version = ""
            watch_id = self._next_watch
            self._next_watch += 1
            entry.watchers[watch_id] = wake

        def unwatch() -> None:
            with self._lock:
                entry.watchers.pop(watch_id, None)

        return unwatch

    def has_snapshot(self, key: naming.WaypointKey) -> bool:
        """True once a source has set something for the key (watching alone does not count)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.latest_version != ""

    def report_applied(self, key: naming.WaypointKey, version: str) -> None:
        """An Envoy acknowledged every resource type of snapshot ``version``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.target.version != version:
                return
            if entry.good is not None and entry.good.version == version:
                return
            entry.good = entry.target
            recovered = entry.latest_version == version
            callbacks = list(self._status_callbacks)
        if recovered:
            metrics.REJECTED.labels(str(key)).set(0)
        LOG.info("xds %s: snapshot %s applied", key, version)
        _notify(callbacks, Status(key, version, None))

    def report_nack(self, nack: Nack) -> None:
        """An Envoy rejected a push: roll the waypoint back to its last good snapshot."""
        with self._lock:
            entry = self._entries.get(nack.key)
            if entry is None or nack.snapshot_version in entry.rejected:
                return
            entry.rejected[nack.snapshot_version] = nack
            rollback = (
                entry.good is not None
                and entry.target.version == nack.snapshot_version
                and entry.good.version != nack.snapshot_version
            )
            if rollback and entry.good is not None:
                entry.target = entry.good
            served = entry.good.version if entry.good is not None else ""
            watchers = list(entry.watchers.values()) if rollback else []
            callbacks = list(self._status_callbacks)
        metrics.NACKS.labels(str(nack.key), metrics.short_type(nack.type_url)).inc()
        metrics.REJECTED.labels(str(nack.key)).set(1)
        LOG.error(
            "xds %s: envoy %s rejected %s version %s (snapshot %s): %s; serving %s",
            nack.key,
            nack.node_id,
            metrics.short_type(nack.type_url),
            nack.version,
            nack.snapshot_version,
            nack.message,
            f"last good snapshot {served}" if served else "nothing better (no good snapshot yet)",
        )
        _call_all(watchers)
        _notify(callbacks, Status(nack.key, served, nack))

    def error(self, key: naming.WaypointKey) -> Nack | None:
        """The rejection of the source's newest snapshot, if it was rejected."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.rejected.get(entry.latest_version) if entry else None

    def last_good(self, key: naming.WaypointKey) -> snapshot.Snapshot | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry.good if entry else None

    # --- status ----------------------------------------------------------------------------

    def on_status(self, callback: StatusCallback) -> None:
        """Call ``callback`` on every rejection and on every newly applied snapshot."""
        with self._lock:
            self._status_callbacks.append(callback)


def _call_all(functions: list[Callable[[], None]]) -> None:
    for function in functions:
        function()


def _notify(callbacks: list[StatusCallback], status: Status) -> None:
    for callback in callbacks:
        try:
            callback(status)
        except Exception:
            # A broken status writer must not stop config delivery.
            LOG.exception("xds status callback failed for %s", status.key)

"""Lease-based leader election (coordination.k8s.io/v1), as client-go's leaderelection does it.

Only the replica holding the Lease reconciles. As in client-go
(k8s.io/client-go/tools/leaderelection/leaderelection.go, ``tryAcquireOrRenew``,
``isLeaseValid``, ``setObservedRecord``):

- **Expiry is judged on this replica's clock only.** Each replica remembers the record it last
  observed and *when it observed it change* (``observed_time``, a monotonic clock). Another
  holder's Lease counts as expired once ``leaseDurationSeconds`` have passed since then; the
  holder's ``renewTime``, written by another machine's clock, is never compared with ours.
- **The holder renews every ``retry_period`` and gives up after ``renew_deadline``.** The
  deadline runs from the start of the last successful renewal, and a watchdog enforces it even
  while a renewal request hangs: at the deadline ``lost`` is set (the reconciling stops) and
  the cluster's write fence refuses every write but the Lease's. Since a successful renewal
  is observed by the others no earlier than it was sent, they take over no earlier than
  ``lease_duration`` after it started: ``lease_duration - renew_deadline`` (5 s by default)
  after this replica has stopped writing. Each Lease request is bounded by the time left.
- Updates carry the resourceVersion, so two candidates racing for an expired Lease cannot
  both win: the loser gets a 409.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from waypoint.controller import apiclient

LOG = logging.getLogger(__name__)
_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
JITTER = 1.2  # client-go's JitterFactor for acquire retries


def _format(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime(_FORMAT)


class LeaderElector:
    def __init__(
        self,
        cluster: apiclient.Cluster,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock  # wall clock: only for the Lease's informational timestamps
        self.monotonic = monotonic  # every decision uses this one
        self.is_leader = False
        self._lock = threading.Lock()
        self._observed: dict[str, Any] | None = None
        self.observed_time = 0.0
        self._renewed_at: float | None = None  # start of the last successful renewal

    # --- one attempt ---------------------------------------------------------------------

    def try_acquire_or_renew(self, timeout: float | None = None) -> bool:
        """One attempt; True when this identity holds the Lease afterwards. ``timeout``
        bounds each request."""
        now = self.monotonic()
        wall = self.clock()
        try:
            lease = self.cluster.get(apiclient.LEASE, self.namespace, self.name, timeout=timeout)
            if lease is None:
                created = self.cluster.create(self._lease(wall, wall, 0), timeout=timeout)
                self._observe(created.get("spec") or {}, now)
                return True
            spec: dict[str, Any] = lease.get("spec") or {}
            if spec != self._observed:
                self._observe(spec, now)  # the record changed: its holder is alive as of now
            holder = spec.get("holderIdentity") or ""
            if holder and holder != self.identity and self._valid(spec, now):
                return False
            taking_over = holder != self.identity
            acquired = wall if taking_over else None
            transitions = int(spec.get("leaseTransitions") or 0) + (
                1 if taking_over and holder else 0
            )
            updated = self._lease(acquired, wall, transitions)
            if acquired is None:
                updated["spec"]["acquireTime"] = spec.get("acquireTime") or _format(wall)
            updated["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            written = self.cluster.replace(updated, timeout=timeout)
            self._observe(written.get("spec") or {}, now)
            return True
        except apiclient.Conflict:
            return False  # someone else wrote the Lease first

    def _observe(self, spec: dict[str, Any], now: float) -> None:
        with self._lock:
            self._observed = spec
            self.observed_time = now

    def _valid(self, spec: dict[str, Any], now: float) -> bool:
        """client-go's isLeaseValid: observed_time + leaseDurationSeconds is still ahead."""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        return self.observed_time + duration > now

    def _lease(self, acquired: float | None, renewed: float, transitions: int) -> dict[str, Any]:
        return {
            "apiVersion": apiclient.LEASE.api_version,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, int(self.lease_duration)),
                "acquireTime": _format(renewed if acquired is None else acquired),
                "renewTime": _format(renewed),
                "leaseTransitions": transitions,
            },
        }

    def release(self) -> None:
        """Give the Lease up at shutdown so a successor need not wait for it to expire."""
        try:
            lease = self.cluster.get(apiclient.LEASE, self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self.cluster.replace(lease)
        except apiclient.ClusterError as exc:
            LOG.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
        self.is_leader = False

    # --- leading ------------------------------------------------------------------------

    def leading(self) -> bool:
        """This replica may write: it renewed the Lease less than ``renew_deadline`` ago."""
        with self._lock:
            renewed = self._renewed_at
        return renewed is not None and self.monotonic() < renewed + self.renew_deadline

    def fence(self, kind: apiclient.Kind) -> None:
        """The cluster's write fence: only the Lease may be written while not ``leading``."""
        if kind != apiclient.LEASE and not self.leading():
            raise apiclient.Fenced(
                f"not writing {kind}: this replica does not hold Lease {self.namespace}/{self.name}"
            )

    def run(self, lead: Callable[[threading.Event], None], stop: threading.Event) -> None:
        """Block until elected, run ``lead(lost)`` in a thread, renew; set ``lost`` on loss."""
        self.cluster.fence = self.fence
        while not stop.is_set():
            started = self.monotonic()
            if self._attempt(None):
                self._renewed(started)
                break
            stop.wait(self.retry_period * (1 + random.random() * JITTER))
        if stop.is_set():
            return
        self.is_leader = True
        lost = threading.Event()
        worker = threading.Thread(target=lead, args=(lost,), name="leader-work", daemon=True)
        worker.start()
        watchdog = threading.Thread(
            target=self._watch_deadline, args=(lost, stop), name="leader-deadline", daemon=True
        )
        watchdog.start()
        while not stop.is_set() and not lost.is_set():
            if stop.wait(self.retry_period) or lost.is_set():
                break
            started = self.monotonic()
            left = self._left(started)
            if left > 0 and self._attempt(left) and not lost.is_set():
                self._renewed(started)
        if not stop.is_set():
            LOG.error("lost the leader Lease %s/%s", self.namespace, self.name)
        lost.set()
        worker.join()
        if stop.is_set():
            self.release()
        with self._lock:
            self._renewed_at = None
        self.is_leader = False

    def _renewed(self, started: float) -> None:
        with self._lock:
            self._renewed_at = started

    def _left(self, now: float) -> float:
        with self._lock:
            renewed = self._renewed_at
        return 0.0 if renewed is None else renewed + self.renew_deadline - now

    def _watch_deadline(self, lost: threading.Event, stop: threading.Event) -> None:
        """Stop leading at the renew deadline, even while a renewal request hangs."""
        while not lost.is_set() and not stop.is_set():
            left = self._left(self.monotonic())
            if left <= 0:
                lost.set()
                return
            stop.wait(min(left, self.retry_period / 4))

    def _attempt(self, timeout: float | None) -> bool:
        try:
            return self.try_acquire_or_renew(timeout)
        except apiclient.ClusterError as exc:
            LOG.warning("leader election: %s", exc)
            return False

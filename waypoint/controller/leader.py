"""Lease-based leader election (coordination.k8s.io/v1), as client-go's leaderelection does it.

Only the replica holding the Lease reconciles. The holder renews every ``retry_period``; if it
cannot renew within ``renew_deadline`` it stops leading. Others take over once the Lease has
not been renewed for ``lease_duration``. Updates carry the resourceVersion, so two candidates
racing for an expired Lease cannot both win: the loser gets a 409.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from waypoint.controller import cluster as kcluster

LOG = logging.getLogger(__name__)
_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _format(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime(_FORMAT)


def _parse(text: str) -> float:
    parsed = datetime.datetime.strptime(text, _FORMAT).replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


class LeaderElector:
    def __init__(
        self,
        cluster: kcluster.Cluster,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.is_leader = False

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this identity holds the Lease afterwards."""
        now = self.clock()
        try:
            lease = self.cluster.get(kcluster.LEASE, self.namespace, self.name)
            if lease is None:
                self.cluster.create(self._lease(now, now, 0))
                return True
            spec: dict[str, Any] = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            if holder and holder != self.identity and not self._expired(spec, now):
                return False
            taking_over = holder != self.identity
            acquired = now if taking_over else _parse(spec.get("acquireTime") or _format(now))
            transitions = int(spec.get("leaseTransitions") or 0) + (
                1 if taking_over and holder else 0
            )
            updated = self._lease(acquired, now, transitions)
            updated["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            self.cluster.replace(updated)
            return True
        except kcluster.Conflict:
            return False  # someone else wrote the Lease first

    def _expired(self, spec: dict[str, Any], now: float) -> bool:
        renewed = spec.get("renewTime")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        return not renewed or _parse(renewed) + duration <= now

    def _lease(self, acquired: float, renewed: float, transitions: int) -> dict[str, Any]:
        return {
            "apiVersion": kcluster.LEASE.api_version,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": _format(acquired),
                "renewTime": _format(renewed),
                "leaseTransitions": transitions,
            },
        }

    def release(self) -> None:
        """Give the Lease up at shutdown so a successor need not wait for it to expire."""
        try:
            lease = self.cluster.get(kcluster.LEASE, self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self.cluster.replace(lease)
        except kcluster.ClusterError as exc:
            LOG.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
        self.is_leader = False

    def run(self, lead: Callable[[threading.Event], None], stop: threading.Event) -> None:
        """Block until elected, run ``lead(lost)`` in a thread, renew; set ``lost`` on loss."""
        while not stop.is_set():
            if self._attempt():
                break
            stop.wait(self.retry_period)
        if stop.is_set():
            return
        self.is_leader = True
        lost = threading.Event()
        worker = threading.Thread(target=lead, args=(lost,), name="leader-work", daemon=True)
        worker.start()
        last_renewal = self.clock()
        while not stop.is_set():
            stop.wait(self.retry_period)
            if self._attempt():
                last_renewal = self.clock()
            elif self.clock() - last_renewal >= self.renew_deadline:
                LOG.error("lost the leader Lease %s/%s", self.namespace, self.name)
                break
        lost.set()
        worker.join()
        if stop.is_set():
            self.release()
        self.is_leader = False

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except kcluster.ClusterError as exc:
            LOG.warning("leader election: %s", exc)
            return False

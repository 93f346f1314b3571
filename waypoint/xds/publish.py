"""Turn a translation into per-waypoint snapshots in the cache: shared by every source.

The file source and the controller both end here: each accepted waypoint is built into a
snapshot and set in the cache (unchanged ones are not pushed), and waypoints that were
published before but are gone now get an empty snapshot.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

from waypoint import model
from waypoint.envoy import options as envoy_options
from waypoint.envoy import resources
from waypoint.xds import cache, naming, snapshot

LOG = logging.getLogger(__name__)

Builder = Callable[[model.Waypoint, envoy_options.BootstrapOptions], snapshot.Snapshot]


def build_snapshot(
    waypoint: model.Waypoint, options: envoy_options.BootstrapOptions
) -> snapshot.Snapshot:
    """The real builder: the same Envoy resources ``waypoint render`` embeds."""
    return snapshot.from_resources(resources.build(waypoint, options))


def xds_options(options: envoy_options.BootstrapOptions) -> envoy_options.BootstrapOptions:
    """Options for resources served over xDS: certificates come over ADS too."""
    return dataclasses.replace(options, sds_over_ads=True)


@dataclasses.dataclass(frozen=True)
class Publication:
    """What one publish did; ``failed`` maps a waypoint to why it could not be built."""

    pushed: tuple[naming.WaypointKey, ...]
    unchanged: tuple[naming.WaypointKey, ...]
    removed: tuple[naming.WaypointKey, ...]
    failed: tuple[tuple[naming.WaypointKey, str], ...]

    @property
    def published(self) -> frozenset[naming.WaypointKey]:
        """Every waypoint that exists now (built or not), for the next call's ``previous``."""
        return frozenset(self.pushed + self.unchanged + tuple(k for k, _ in self.failed))


def publish(
    snapshots: cache.SnapshotCache,
    waypoints: Iterable[model.Waypoint],
    options: envoy_options.BootstrapOptions,
    previous: Iterable[naming.WaypointKey] = (),
    builder: Builder = build_snapshot,
) -> Publication:
    """Build and set every waypoint; empty the ones in ``previous`` that are gone."""
    pushed: list[naming.WaypointKey] = []
    unchanged: list[naming.WaypointKey] = []
    failed: list[tuple[naming.WaypointKey, str]] = []
    present: set[naming.WaypointKey] = set()
    for waypoint in waypoints:
        key = naming.WaypointKey(waypoint.namespace, waypoint.name)
        present.add(key)
        try:
            snap = builder(waypoint, options)
        except Exception as exc:
            # A builder bug for one waypoint must not stop the others; its last snapshot
            # stays in the cache.
            LOG.exception("xds: cannot build waypoint %s", key)
            failed.append((key, f"cannot build config: {exc}"))
            continue
        (pushed if snapshots.set(key, snap) else unchanged).append(key)
    removed = sorted(set(previous) - present)
    for key in removed:
        LOG.warning("xds: waypoint %s is gone; its Envoys get no config", key)
        snapshots.delete(key)
    return Publication(
        tuple(sorted(pushed)), tuple(sorted(unchanged)), tuple(removed), tuple(failed)
    )

"""Live config for the controller's waypoints: ``waypoint controller --xds-listen ADDR``.

In this mode the generated ConfigMap holds only the minimal xDS bootstrap (node, admin, the ADS
cluster pointing at the controller's xDS Service), which does not change when routes do; so a
route change costs no Kubernetes write and no rollout. The config itself goes to a
``waypoint.xds`` snapshot cache served by the ADS server in the controller process.

``Publisher`` pushes: whenever anything translation reads changes (and once the informers have
synced) it translates the world and calls ``waypoint.xds.publish.publish`` for every waypoint;
unchanged snapshots are not pushed, vanished waypoints get an empty one. It runs on every
controller replica, leader or not, so whichever replica an Envoy reaches through the Service
serves the current config. A NACK reported by the cache requeues the waypoint's Gateway, whose
reconcile reads ``error()`` into the ``Programmed`` condition.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from waypoint import model, pipeline
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants
from waypoint.xds import bootstrap, cache, naming
from waypoint.xds import publish as xds_publish

LOG = logging.getLogger(__name__)
Obj = dict[str, Any]
DEFAULT_PORT = 15010
SERVICE_NAME = "waypoint-controller-xds"


def default_address(namespace: str, port: int = DEFAULT_PORT) -> str:
    """The controller's xDS Service as pods reach it (manifests/overlays/xds creates it)."""
    return f"{SERVICE_NAME}.{namespace}.svc:{port}"


class Publisher:
    """The xDS side of the controller: bootstraps for the ConfigMaps, snapshots for the cache."""

    def __init__(
        self,
        snapshots: cache.SnapshotCache,
        xds_address: str,
        options: envoy_options.BootstrapOptions,
        delta: bool = True,
        builder: xds_publish.Builder = xds_publish.build_snapshot,
    ) -> None:
        bootstrap.parse_address(xds_address)  # a bad address fails at start, not per Gateway
        self.cache = snapshots
        self.xds_address = xds_address
        # Delta: an Envoy that reconnects tells the server what it holds (docs/xds.md).
        self.delta = delta
        # The served resources must match the pods: certificates over ADS, extauthz in the pod.
        self.options = dataclasses.replace(
            xds_publish.xds_options(options), extauthz_address=constants.EXTAUTHZ_LISTEN
        )
        self._changed = threading.Event()
        self._previous: frozenset[naming.WaypointKey] = frozenset()
        self.last: xds_publish.Publication | None = None
        self._builder = builder
        # The controller shares one translation per world change through this.
        self.translate: Callable[[Sequence[Mapping[str, Any]], str], model.Translation] = (
            pipeline.translate_objects
        )

    # --- the ConfigMap side ----------------------------------------------------------------

    def renderer(
        self,
        objects: Sequence[Mapping[str, Any]],
        namespace: str,
        name: str,
        opts: envoy_options.BootstrapOptions,
    ) -> pipeline.Rendered:
        """A ``reconcile.Renderer``: the waypoint's IR and its xDS bootstrap (not its config)."""
        translation = self.translate(objects, opts.trust_domain)
        waypoint = pipeline.accepted_waypoint(translation, namespace, name)
        boot = bootstrap.build(self.xds_address, namespace, name, opts, delta=self.delta)
        return pipeline.Rendered(
            translation=translation,
            waypoint=waypoint,
            bootstrap=boot,
            bootstrap_yaml=yaml.safe_dump(boot, sort_keys=True),
        )

    def error(self, namespace: str, name: str) -> str | None:
        """Why the waypoint's Envoys reject its newest config, or None."""
        key = naming.WaypointKey(namespace, name)
        nack = self.cache.error(key)
        if nack is None:
            return None
        kind = nack.type_url.rpartition(".")[2] or nack.type_url
        served = (
            "the last good config is still served"
            if self.cache.last_good(key) is not None
            else "no config was accepted yet"
        )
        return (
            f"Envoy {nack.node_id} rejected the {kind} update (version {nack.version}): "
            f"{nack.message.strip()}; {served}"
        )

    def on_status(self, requeue: Callable[[str, str], None]) -> None:
        """Requeue the waypoint's Gateway whenever its xDS state changes (NACK, or recovery)."""
        self.cache.on_status(lambda status: requeue(status.key.namespace, status.key.name))

    # --- the snapshot side ------------------------------------------------------------------

    def changed(self) -> None:
        """Something translation reads changed: publish soon (bursts collapse into one)."""
        self._changed.set()

    def publish(self, world: Sequence[Mapping[str, Any]]) -> xds_publish.Publication:
        translation = self.translate(world, self.options.trust_domain)
        return self.publish_translation(translation)

    def publish_translation(self, translation: model.Translation) -> xds_publish.Publication:
        result = xds_publish.publish(
            self.cache, translation.waypoints, self.options, self._previous, self._builder
        )
        self._previous = result.published
        self.last = result
        for key, problem in result.failed:
            LOG.error("xds: waypoint %s: %s", key, problem)
        return result

    def run(self, world: Callable[[], list[Obj]], stop: threading.Event) -> None:
        """Publish now (the informers have synced), then after every change, until ``stop``."""
        self._changed.set()
        while not stop.is_set():
            if not self._changed.wait(0.5):
                continue
            self._changed.clear()
            try:
                self.publish(world())
            except Exception:  # one bad pass must not end live config for every waypoint
                LOG.exception("xds: publishing failed; retrying on the next change")

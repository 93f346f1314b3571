"""The running controller: informers feed a rate-limited queue, workers reconcile keys.

Keys are ``("gateway", ns, name)``, ``("gatewayclass", "", name)`` and ``("routes", "", "")``
(all route, policy and Service binding status, from one translation of the world). Any change
to what translation reads (Namespaces, Services, EndpointSlices, Pods, routes, Gateways,
policies) requeues every waypoint Gateway and that status; the queue collapses the duplicates.
A change to a parametersRef ConfigMap requeues the Gateways whose settings read it (all of them,
and the GatewayClass, for the class's own). A periodic resync requeues everything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from typing import Any

from waypoint.controller import cluster as kcluster
from waypoint.controller import informer as kinformer
from waypoint.controller import metrics as kmetrics
from waypoint.controller import queue as kqueue
from waypoint.controller import reconcile, trim
from waypoint.controller import xds as kxds
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, gateway, settings

LOG = logging.getLogger(__name__)
Obj = dict[str, Any]
ROUTES_KEY = ("routes", "", "")
MANAGED_SELECTOR = f"{constants.MANAGED_BY_LABEL}={constants.MANAGED_BY_VALUE}"
REGO_INFORMER = "ConfigMap/extauthz-policy"  # the users' labeled Rego ConfigMaps
PARAMETERS_INFORMER = "ConfigMap/parameters"  # every ConfigMap, trimmed to its identity


class Controller:
    def __init__(
        self,
        cluster: kcluster.Cluster,
        renderer: reconcile.Renderer = reconcile.pipeline_renderer,
        translator: reconcile.Translator = reconcile.pipeline_translator,
        options: envoy_options.BootstrapOptions | None = None,
        defaults: settings.Settings | None = None,
        metrics: kmetrics.Metrics | None = None,
        resync_period: float = 300.0,
        watch_timeout: int = 300,
        workers: int = 1,
        publisher: kxds.Publisher | None = None,
    ) -> None:
        self.cluster = cluster
        self.publisher = publisher
        if publisher is not None:
            # The ConfigMap carries the xDS bootstrap; certificates come over ADS as well.
            renderer = publisher.renderer
            options = publisher.options
        self.metrics = metrics or kmetrics.Metrics()
        self.queue = kqueue.WorkQueue()
        self.resync_period = resync_period
        self.workers = workers
        # Without Gateways there is nothing to do: fail early, with install instructions.
        cluster.resource(kcluster.GATEWAY)
        cluster.resource(kcluster.GATEWAY_CLASS)
        self.informers: dict[str, kinformer.Informer] = {}
        for kind in reconcile.WORLD_KINDS:
            if cluster.serves(kind):
                self._inform(kind, self._on_world_change, None, watch_timeout, TRANSFORMS.get(kind))
            elif kind in kcluster.POLICY_KINDS:
                # Policies are optional: waypoints work without them. A CRD installed later
                # is picked up when the controller restarts.
                LOG.warning(
                    "the cluster does not serve %s (%s); policies of that kind are ignored "
                    "until its CRD is installed and the controller restarts",
                    kind.kind,
                    kind.api_version,
                )
        # Services are already watched in full above, as translation input.
        for kind in (kcluster.DEPLOYMENT, kcluster.SERVICE_ACCOUNT, kcluster.CONFIG_MAP):
            self._inform(kind, self._on_owned_change, MANAGED_SELECTOR, watch_timeout)
        self.informers[REGO_INFORMER] = kinformer.Informer(
            cluster,
            kcluster.CONFIG_MAP,
            self._on_rego_change,
            self.metrics,
            constants.EXTAUTHZ_POLICY_LABEL,
            watch_timeout,
        )
        # parametersRef ConfigMaps carry no label of ours: watch them all, keeping only their
        # identity, and requeue the Gateways (or the whole class) whose settings name one.
        self.informers[PARAMETERS_INFORMER] = kinformer.Informer(
            cluster,
            kcluster.CONFIG_MAP,
            self._on_parameters_change,
            self.metrics,
            None,
            watch_timeout,
            transform=trim.reference,
        )
        self.reconciler = reconcile.Reconciler(
            cluster,
            self.world,
            renderer,
            translator,
            options=options,
            defaults=defaults,
            metrics=self.metrics,
            xds_error=publisher.error if publisher else None,
        )
        self.errors: list[str] = []
        if publisher is not None:
            publisher.on_status(lambda ns, name: self.queue.add(("gateway", ns, name)))

    def _inform(
        self,
        kind: kcluster.Kind,
        handler: kinformer.Handler,
        selector: str | None,
        watch_timeout: int,
        transform: kinformer.Transform | None = None,
    ) -> None:
        self.informers[kind.kind] = kinformer.Informer(
            self.cluster, kind, handler, self.metrics, selector, watch_timeout, transform=transform
        )

    # --- the world and the keys ----------------------------------------------------------

    def world(self) -> list[Obj]:
        objects: list[Obj] = []
        for kind in reconcile.WORLD_KINDS:
            informer = self.informers.get(kind.kind)
            if informer is not None:
                objects.extend(informer.items())
        return objects

    def gateways(self) -> list[Obj]:
        informer = self.informers["Gateway"]
        return [gw for gw in informer.items() if gateway.is_waypoint(gw)]

    def enqueue_all(self) -> None:
        if self.publisher is not None:
            self.publisher.changed()  # resyncs republish too (a no-op when nothing changed)
        for gw in self.gateways():
            namespace, name = gateway.key(gw)
            self.queue.add(("gateway", namespace, name))
        for gateway_class in self.informers["GatewayClass"].items():
            self.queue.add(("gatewayclass", "", gateway.key(gateway_class)[1]))
        self.queue.add(ROUTES_KEY)

    def _on_world_change(self, before: Obj | None, after: Obj | None) -> None:
        obj = after or before or {}
        if _no_input_changed(before, after):
            return  # status (mostly our own writes) is never an input, but a Pod's IPs are
        if self.publisher is not None:
            self.publisher.changed()
        if obj.get("kind") == "GatewayClass":
            # Its parametersRef holds class-wide defaults: every waypoint may change.
            self.enqueue_all()
            return
        if obj.get("kind") == "Gateway":
            if any(o and gateway.is_waypoint(o) for o in (before, after)):
                namespace, name = gateway.key(obj)
                self.queue.add(("gateway", namespace, name))
            self.queue.add(ROUTES_KEY)
            return
        self.enqueue_all()

    def _on_owned_change(self, before: Obj | None, after: Obj | None) -> None:
        obj = after or before or {}
        labels = (obj.get("metadata") or {}).get("labels") or {}
        name = labels.get(constants.GATEWAY_NAME_LABEL)
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        if name:
            self.queue.add(("gateway", namespace, name))

    def _on_parameters_change(self, before: Obj | None, after: Obj | None) -> None:
        obj = after or before or {}
        key = kinformer.object_key(obj)
        for gateway_class in self.informers["GatewayClass"].items():
            if key in settings.referenced_config_maps({}, gateway_class):
                self.enqueue_all()  # class-wide defaults: every waypoint, and the class
                return
        for gw in self.gateways():
            if key in settings.referenced_config_maps(gw, None):
                self.queue.add(("gateway", *gateway.key(gw)))

    def _on_rego_change(self, before: Obj | None, after: Obj | None) -> None:
        obj = after or before or {}
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        for gw in self.gateways():
            if gateway.key(gw)[0] == namespace:
                self.queue.add(("gateway", *gateway.key(gw)))

    # --- running -----------------------------------------------------------------------

    def process_one(self, timeout: float = 0.5) -> bool:
        """Reconcile one key from the queue; False when there was none."""
        key = self.queue.get(timeout)
        if key is None:
            return False
        try:
            self._reconcile(key)
            self.queue.forget(key)
            self.metrics.reconciles.labels(str(_kind(key)), "ok").inc()
        except Exception as exc:  # a failed key backs off; the worker keeps going
            delay = self.queue.add_rate_limited(key)
            self.metrics.reconciles.labels(str(_kind(key)), "error").inc()
            message = f"reconcile {key}: {exc}"
            self.errors.append(message)
            LOG.warning("%s; retrying in %.2fs", message, delay)
        finally:
            self.queue.done(key)
            self.metrics.queue_depth.set(len(self.queue))
        return True

    def _reconcile(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        kind, namespace, name = (str(part) for part in key)
        with self.metrics.reconcile_seconds.labels(kind).time():
            if kind == "gateway":
                self.reconciler.reconcile_gateway(namespace, name)
            elif kind == "gatewayclass":
                self.reconciler.reconcile_gateway_class(name)
            else:
                self.reconciler.reconcile_route_status()

    def start_informers(self) -> None:
        for informer in self.informers.values():
            informer.start()

    def wait_synced(self, stop: threading.Event) -> bool:
        for informer in self.informers.values():
            while not informer.synced.wait(0.2):
                if stop.is_set():
                    return False
        return True

    def stop_informers(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def run_publisher(self, stop: threading.Event) -> None:
        """Push live config until ``stop`` (every replica, leader or not). Informers must run."""
        if self.publisher is not None and self.wait_synced(stop):
            self.publisher.run(self.world, stop)

    def run(self, stop: threading.Event, own_informers: bool = True) -> None:
        """Watch and reconcile until ``stop`` is set. Without ``own_informers`` the caller
        has started the informers (they outlive leadership, to keep live config served)."""
        if own_informers:
            self.start_informers()
        try:
            if not self.wait_synced(stop):
                return
            if self.publisher is not None and own_informers:
                # One-process mode: the publisher shares this run's lifetime.
                publisher = threading.Thread(
                    target=self.publisher.run,
                    args=(self.world, stop),
                    name="xds-publish",
                    daemon=True,
                )
                publisher.start()
            self.enqueue_all()
            workers = [
                threading.Thread(target=self._work, args=(stop,), name=f"worker-{n}", daemon=True)
                for n in range(self.workers)
            ]
            for worker in workers:
                worker.start()
            while not stop.wait(self.resync_period):
                self.enqueue_all()
            self.queue.shutdown()
            for worker in workers:
                worker.join()
        finally:
            if own_informers:
                self.stop_informers()

    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.process_one()


def _kind(key: Hashable) -> object:
    return key[0] if isinstance(key, tuple) else key


# Kinds whose cached objects are trimmed to what translation reads (trim.py).
TRANSFORMS: dict[kcluster.Kind, kinformer.Transform] = {kcluster.POD: trim.pod}


def _no_input_changed(before: Obj | None, after: Obj | None) -> bool:
    """Nothing translation or the generated objects depend on moved: only status (or, for a
    trimmed Pod, whose IPs and phase are inputs, only its resourceVersion)."""
    if before is None or after is None:
        return False
    if after.get("kind") == kcluster.POD.kind:
        return _without_version(before) == _without_version(after)
    return _without_status(before) == _without_status(after)


def _without_version(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}


def _without_status(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    return {
        **{k: v for k, v in obj.items() if k != "status"},
        "metadata": {
            k: v for k, v in meta.items() if k not in ("resourceVersion", "managedFields")
        },
    }

"""The running controller: informers feed a rate-limited queue, workers reconcile keys.

Keys are ``("gateway", ns, name)``, ``("gatewayclass", "", name)`` and ``("routes", "", "")``
(all route and policy status, from one translation of the world). A change to what
translation reads requeues only the Gateways it may affect (``index.Index``: the object's
namespace, the waypoints its labels and references name, and those that last read its
namespace), plus the route and policy status; a GatewayClass change requeues everything.
Generated objects are read from informer caches (``informer.CacheReader``), not GETs, and the
world is translated once per change (``world.Translations``), shared by every Gateway
reconcile, the route, policy and Service binding status and the xDS publisher. Pods are
cached trimmed to what translation reads (``trim.pod``). parametersRef ConfigMaps carry no
label of ours, so every ConfigMap is watched, trimmed to its identity, and a change requeues
the Gateways (or the whole class) whose settings name it.

``workers`` threads reconcile at once; the queue never hands the same key to two of them,
so a hung request holds up only its own key. Optional kinds (policies, GRPCRoute) that the
server does not serve or does not let us read are left out of the world: the GatewayClass
says so in its ``OptionalKindsAvailable`` condition, and ``waypoint_controller_kind_unavailable``
counts them. A periodic resync requeues everything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from typing import Any

from waypoint import wellknown
from waypoint.controller import apiclient, reconcile, status, trim
from waypoint.controller import index as kindex
from waypoint.controller import informer as kinformer
from waypoint.controller import metrics as kmetrics
from waypoint.controller import queue as kqueue
from waypoint.controller import world as kworld
from waypoint.controller import xds as kxds
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, gateway, settings
from waypoint.translate import index as translate_index

LOG = logging.getLogger(__name__)
Obj = dict[str, Any]
ROUTES_KEY = ("routes", "", "")
MANAGED_SELECTOR = f"{wellknown.MANAGED_BY_LABEL}={wellknown.MANAGED_BY_VALUE}"
REGO_INFORMER = "ConfigMap/extauthz-policy"  # the users' labeled Rego ConfigMaps
PARAMETERS_INFORMER = "ConfigMap/parameters"  # every ConfigMap, trimmed to its identity
DEFAULT_WORKERS = 4
# Inputs the controller works without: a cluster may lack their CRDs, or deny reading them.
OPTIONAL_KINDS = (*apiclient.POLICY_KINDS, apiclient.GRPC_ROUTE)
# What the controller generates and reads back from label-selected caches (Services are
# watched in full as translation input).
OWNED_KINDS = (
    apiclient.DEPLOYMENT,
    apiclient.SERVICE_ACCOUNT,
    apiclient.CONFIG_MAP,
    apiclient.AUTOSCALER,
    apiclient.DISRUPTION_BUDGET,
)
OPTIONAL_CONDITION = "OptionalKindsAvailable"


class Controller:
    def __init__(
        self,
        cluster: apiclient.Cluster,
        renderer: reconcile.Renderer | None = None,
        translator: reconcile.Translator | None = None,
        options: envoy_options.BootstrapOptions | None = None,
        defaults: settings.Settings | None = None,
        metrics: kmetrics.Metrics | None = None,
        resync_period: float = 300.0,
        watch_timeout: int = 300,
        workers: int = DEFAULT_WORKERS,
        publisher: kxds.Publisher | None = None,
        optional_retry: float = 60.0,
        revision: str = "",
    ) -> None:
        self.cluster = cluster
        self.revision = revision
        self.publisher = publisher
        self.index = kindex.Index()
        self.translations = kworld.Translations(learn=self.index.learn)
        if renderer is None:
            renderer = self.translations.renderer
        if publisher is not None:
            # The ConfigMap carries the xDS bootstrap; certificates come over ADS as well.
            publisher.translate = self.translations.translate
            renderer = publisher.renderer
            options = publisher.options
        self.metrics = metrics or kmetrics.Metrics()
        self.queue = kqueue.WorkQueue()
        self.resync_period = resync_period
        self.workers = max(1, workers)
        # Without Gateways there is nothing to do: fail early, with install instructions.
        cluster.resource(apiclient.GATEWAY)
        cluster.resource(apiclient.GATEWAY_CLASS)
        self.reader = kinformer.CacheReader(cluster)
        self.informers: dict[str, kinformer.Informer] = {}
        self._world_kinds: list[str] = []
        for kind in reconcile.WORLD_KINDS:
            optional = kind in OPTIONAL_KINDS
            self._inform(
                kind,
                kind.kind,
                self._on_world_change,
                None,
                watch_timeout,
                optional,
                optional_retry,
                TRANSFORMS.get(kind),
            )
            self._world_kinds.append(kind.kind)
        for kind in OWNED_KINDS:
            if kind.kind not in self.informers:
                self._inform(
                    kind, kind.kind, self._on_owned_change, MANAGED_SELECTOR, watch_timeout
                )
        self._inform(
            apiclient.CONFIG_MAP,
            REGO_INFORMER,
            self._on_rego_change,
            constants.EXTAUTHZ_POLICY_LABEL,
            watch_timeout,
        )
        # parametersRef ConfigMaps carry no label of ours: watch them all, keeping only their
        # identity, and requeue the Gateways (or the whole class) whose settings name one.
        # Trimmed, they cannot answer reads: the CacheReader does not use them.
        self.informers[PARAMETERS_INFORMER] = kinformer.Informer(
            cluster,
            apiclient.CONFIG_MAP,
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
            translator or self.translations.translate,
            options=options,
            defaults=defaults,
            metrics=self.metrics,
            xds_error=publisher.error if publisher else None,
            reader=self.reader,
            class_verdicts=self.class_verdicts,
            revision=revision,
        )
        self.errors: list[str] = []
        if publisher is not None:
            publisher.on_status(lambda ns, name: self.queue.add(("gateway", ns, name)))

    def _inform(
        self,
        kind: apiclient.Kind,
        key: str,
        handler: kinformer.Handler,
        selector: str | None,
        watch_timeout: int,
        optional: bool = False,
        optional_retry: float = 60.0,
        transform: kinformer.Transform | None = None,
    ) -> None:
        informer = kinformer.Informer(
            self.cluster,
            kind,
            handler,
            self.metrics,
            selector,
            watch_timeout,
            optional=optional,
            optional_retry=optional_retry,
            on_availability=self._on_availability if optional else None,
            significant=_translation_input,
            transform=transform,
        )
        self.informers[key] = informer
        self.reader.add(informer, complete=selector is None)

    # --- the world and the keys ----------------------------------------------------------

    def world(self) -> kworld.Snapshot:
        """Every object translation reads, tagged with the informers' versions (read first,
        so the objects are never older than the version says)."""
        informers = [self.informers[kind] for kind in self._world_kinds]
        version = tuple(informer.version for informer in informers)
        objects: list[Obj] = []
        for informer in informers:
            objects.extend(informer.items())
        return kworld.Snapshot(objects, version)

    def gateways(self) -> list[Obj]:
        informer = self.informers["Gateway"]
        return [
            gw
            for gw in informer.items()
            if gateway.is_waypoint(gw) and gateway.managed_by(gw, self.revision)
        ]

    def unavailable(self) -> dict[str, str]:
        """Optional kinds left out of the world, and why."""
        return {
            str(informer.kind): informer.unavailable
            for informer in self.informers.values()
            if informer.unavailable is not None
        }

    def class_verdicts(self) -> list[status.Verdict]:
        """The GatewayClass's ``OptionalKindsAvailable`` condition."""
        missing = self.unavailable()
        if not missing:
            return [
                status.Verdict(
                    OPTIONAL_CONDITION,
                    True,
                    "AllAvailable",
                    "every optional kind is served and readable",
                )
            ]
        message = "; ".join(f"{kind}: {why}" for kind, why in sorted(missing.items()))
        return [
            status.Verdict(
                OPTIONAL_CONDITION,
                False,
                "KindsUnavailable",
                f"left out of every waypoint until readable: {message}",
            )
        ]

    def enqueue_all(self) -> None:
        if self.publisher is not None:
            self.publisher.changed()  # resyncs republish too (a no-op when nothing changed)
        for gw in self.gateways():
            namespace, name = gateway.key(gw)
            self.queue.add(("gateway", namespace, name))
        self._enqueue_classes()
        self.queue.add(ROUTES_KEY)

    def _enqueue_classes(self) -> None:
        for gateway_class in self.informers["GatewayClass"].items():
            self.queue.add(("gatewayclass", "", gateway.key(gateway_class)[1]))

    def _on_availability(self) -> None:
        for kind, informer in self.informers.items():
            if informer.optional:
                self.metrics.kind_unavailable.labels(kind).set(
                    1 if informer.unavailable is not None else 0
                )
        self._enqueue_classes()

    def _on_world_change(self, before: Obj | None, after: Obj | None) -> None:
        obj = after or before or {}
        kind = obj.get("kind")
        if kind == "Gateway":
            self.index.gateway_changed(before, after)
        elif kind == "Namespace":
            self.index.namespace_changed(before, after)
        if not _significant(before, after):
            return  # status (mostly our own writes) is never an input
        if self.publisher is not None:
            self.publisher.changed()
        if kind == "GatewayClass":
            # Its parametersRef holds class-wide defaults: every waypoint may change.
            self.enqueue_all()
            return
        if kind == "Gateway":
            if any(o and gateway.is_waypoint(o) for o in (before, after)):
                namespace, name = gateway.key(obj)
                self.queue.add(("gateway", namespace, name))
        else:
            for namespace, name in sorted(self.index.affected(before, after)):
                self.queue.add(("gateway", namespace, name))
        self.queue.add(ROUTES_KEY)

    def _on_owned_change(self, before: Obj | None, after: Obj | None) -> None:
        obj = after or before or {}
        labels = (obj.get("metadata") or {}).get("labels") or {}
        name = labels.get(wellknown.GATEWAY_NAME_LABEL)
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
        """A user's labeled Rego ConfigMap changed: requeue the waypoints of its namespace
        (any of them may name it)."""
        obj = after or before or {}
        namespace = str((obj.get("metadata") or {}).get("namespace") or "")
        for name_space, name in self.index.in_namespace(namespace):
            self.queue.add(("gateway", name_space, name))

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
            del self.errors[:-100]  # the latest errors, not every error since start
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


def _significant(before: Obj | None, after: Obj | None) -> bool:
    """Something translation or the generated objects depend on moved. Status never is an
    input (it is mostly our own writes), except a Pod's: its IPs and phase."""
    if before is None or after is None:
        return True
    if after.get("kind") == apiclient.POD.kind:
        # Trimmed to what translation reads (status included): anything but the version.
        return _without_version(before) != _without_version(after)
    return _without_status(before) != _without_status(after)


def _translation_input(before: Obj | None, after: Obj | None) -> bool:
    """The change moves the world translation reads: significant, and not an object the
    controller generated (a waypoint's own Service), which translation leaves out. Creating
    200 waypoint Services must not translate the world 200 times."""
    return _significant(before, after) and not (_generated(before) and _generated(after))


def _generated(obj: Obj | None) -> bool:
    """No object, or one the controller generated."""
    return obj is None or translate_index.generated((obj.get("metadata") or {}).get("labels") or {})


# Kinds whose cached objects are trimmed to what translation reads (trim.py).
TRANSFORMS: dict[apiclient.Kind, kinformer.Transform] = {apiclient.POD: trim.pod}


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

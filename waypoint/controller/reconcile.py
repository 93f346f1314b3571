"""One reconcile: a Gateway key in, applied objects and status out, with zero writes when
nothing changed.

Desired objects come from ``waypoint.kube`` (pure). Each carries the hash of its own content in
``waypoint.dev/applied-hash``; an object is re-applied only when that hash differs from the
live one or when a field we set has drifted, so an unchanged world costs reads only. Objects
in the way that lack our managed-by label, or belong to another Gateway, are never touched:
the Gateway's status says why it is not Programmed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from waypoint import model
from waypoint.controller import cluster as kcluster
from waypoint.controller import metrics as kmetrics
from waypoint.controller import status
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, gateway, names, render, settings

if TYPE_CHECKING:
    from waypoint import pipeline

LOG = logging.getLogger(__name__)
APPLIED_HASH = "waypoint.dev/applied-hash"
STATUS_RETRIES = 5

Obj = dict[str, Any]
World = Callable[[], list[Obj]]


# Objects + waypoint key + options → the waypoint's Envoy bootstrap YAML.
Renderer = render.Renderer
Translator = Callable[[Sequence[Mapping[str, Any]], str], model.Translation]


class RenderRejected(ValueError):
    """The translator did not accept the Gateway as a waypoint; the message says why."""


def pipeline_renderer(
    objects: Sequence[Mapping[str, Any]],
    namespace: str,
    name: str,
    options: envoy_options.BootstrapOptions,
) -> pipeline.Rendered:
    from waypoint import pipeline

    try:
        return pipeline.render(objects, namespace, name, options)
    except pipeline.WaypointNotFound as exc:
        raise RenderRejected(str(exc)) from exc


def pipeline_translator(
    objects: Sequence[Mapping[str, Any]], trust_domain: str
) -> model.Translation:
    from waypoint import pipeline

    return pipeline.translate_objects(objects, trust_domain)


@dataclasses.dataclass
class Outcome:
    """What one reconcile did; ``foreign`` lists objects left alone."""

    writes: int = 0
    foreign: list[str] = dataclasses.field(default_factory=list)
    programmed: bool = False


def stamp(obj: Mapping[str, Any]) -> Obj:
    """``obj`` with the hash of its content in the applied-hash annotation."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]
    stamped = json.loads(json.dumps(obj))
    stamped["metadata"].setdefault("annotations", {})[APPLIED_HASH] = digest
    return dict(stamped)


def contains(live: Any, desired: Any) -> bool:
    """Every field of ``desired`` has the same value in ``live`` (server defaults ignored)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and contains(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list):
            return False
        if desired and all(isinstance(item, Mapping) and "name" in item for item in desired):
            # Named items (ports, containers, volumes) merge by name under server-side apply:
            # items other managers added are theirs, not drift.
            by_name = {item.get("name"): item for item in live if isinstance(item, Mapping)}
            return all(contains(by_name.get(item["name"]), item) for item in desired)
        return len(live) == len(desired) and all(
            contains(a, b) for a, b in zip(live, desired, strict=True)
        )
    return bool(live == desired)


def ownership_problem(live: Mapping[str, Any], gw: Mapping[str, Any]) -> str | None:
    """Why ``live`` is not ours to change, or None when it is."""
    meta = live.get("metadata") or {}
    where = f"{live.get('kind')} {meta.get('namespace')}/{meta.get('name')}"
    labels = meta.get("labels") or {}
    if labels.get(constants.MANAGED_BY_LABEL) != constants.MANAGED_BY_VALUE:
        return (
            f"{where} exists and is not managed by {constants.MANAGED_BY_VALUE} "
            f"(no {constants.MANAGED_BY_LABEL}={constants.MANAGED_BY_VALUE} label); left alone"
        )
    uid = (gw.get("metadata") or {}).get("uid")
    owners = [ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")]
    if uid and owners and all(ref.get("uid") != uid for ref in owners):
        return f"{where} belongs to another owner ({owners[0].get('kind')} {owners[0].get('name')}); left alone"
    return None


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    """Reconciles Gateways, the GatewayClass and route status against one cluster."""

    def __init__(
        self,
        cluster: kcluster.Cluster,
        world: World,
        renderer: Renderer = pipeline_renderer,
        translator: Translator = pipeline_translator,
        options: envoy_options.BootstrapOptions | None = None,
        defaults: settings.Settings | None = None,
        metrics: kmetrics.Metrics | None = None,
        clock: Callable[[], str] = utc_now,
        xds_error: Callable[[str, str], str | None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.world = world
        self.renderer = renderer
        self.translator = translator
        self.options = options or envoy_options.BootstrapOptions()
        self.defaults = defaults or settings.Settings()
        self.metrics = metrics or kmetrics.Metrics()
        self.clock = clock
        # Live config (``--xds-listen``): why the waypoint's Envoys reject their config, if so.
        self.xds_error = xds_error

    # --- Gateway -----------------------------------------------------------------------

    def reconcile_gateway(self, namespace: str, name: str) -> Outcome:
        outcome = Outcome()
        gw = self.cluster.get(kcluster.GATEWAY, namespace, name)
        if gw is None or not gateway.is_waypoint(gw):
            return outcome  # deleted: the garbage collector removes what it owned
        problems = gateway.problems(gw)
        conf = None if problems else self._settings(gw, problems)
        if conf is None:
            accepted = status.Verdict("Accepted", False, "InvalidParameters", "; ".join(problems))
            self._write_gateway_status(
                gw, accepted, _not_programmed("Invalid", "not accepted"), [], outcome
            )
            return outcome
        try:
            desired = render.gateway_objects(
                gw, conf, self.world(), self.options, self.renderer, self._config_map
            )
        except (RenderRejected, ValueError) as exc:
            # The last applied objects stay: a bad input never takes a running waypoint down.
            reason = "InvalidParameters" if isinstance(exc, settings.SettingsError) else "Invalid"
            accepted = status.Verdict("Accepted", False, reason, str(exc))
            self._write_gateway_status(
                gw, accepted, _not_programmed("Invalid", "not accepted"), [], outcome
            )
            return outcome
        live = self._apply_all(gw, desired, outcome)
        self._prune(gw, desired, outcome)
        accepted = status.Verdict("Accepted", True, "Accepted", "waypoint accepted")
        programmed, addresses = self._programmed(live, outcome, waiting_for(gw, conf))
        rejected = self.xds_error(namespace, name) if self.xds_error else None
        if rejected:
            programmed = _not_programmed("Invalid", rejected)
            outcome.programmed = False
        self._write_gateway_status(gw, accepted, programmed, addresses, outcome)
        self.metrics.foreign.set(len(outcome.foreign))
        return outcome

    def _settings(self, gw: Obj, problems: list[str]) -> settings.Settings | None:
        namespace, name = gateway.key(gw)
        try:
            class_config = self._class_config_map(problems)
            ref = settings.parameters_ref(gw)
            config_map = None
            if ref:
                config_map = self.cluster.get(kcluster.CONFIG_MAP, namespace, ref)
                if config_map is None:
                    problems.append(
                        f"Gateway {namespace}/{name}: parametersRef ConfigMap {namespace}/{ref} not found"
                    )
            if problems:
                return None
            return settings.resolve(gw, config_map, self.defaults, class_config)
        except settings.SettingsError as exc:
            problems.append(str(exc))
            return None

    def _config_map(self, namespace: str, name: str) -> Obj | None:
        return self.cluster.get(kcluster.CONFIG_MAP, namespace, name)

    def _class_config_map(self, problems: list[str]) -> Obj | None:
        """The class-wide defaults ConfigMap named by the GatewayClass's parametersRef."""
        gateway_class = self.cluster.get(kcluster.GATEWAY_CLASS, "", constants.GATEWAY_CLASS)
        ref = settings.class_parameters_ref(gateway_class) if gateway_class else None
        if ref is None:
            return None
        found = self.cluster.get(kcluster.CONFIG_MAP, *ref)
        if found is None:
            problems.append(
                f"GatewayClass {constants.GATEWAY_CLASS}: parametersRef ConfigMap {ref[0]}/{ref[1]} not found"
            )
        return found

    def _apply_all(self, gw: Obj, desired: list[Obj], outcome: Outcome) -> dict[str, Obj]:
        live_by_kind: dict[str, Obj] = {}
        for obj in desired:
            wanted = stamp(obj)
            kind = kcluster.kind_of(obj)
            live = self.cluster.get(kind, obj["metadata"]["namespace"], obj["metadata"]["name"])
            if live is not None:
                problem = ownership_problem(live, gw)
                if problem:
                    LOG.warning("%s", problem)
                    outcome.foreign.append(problem)
                    continue
                if contains(live, wanted):
                    live_by_kind[obj["kind"]] = live
                    continue
            live_by_kind[obj["kind"]] = self.cluster.apply(wanted)
            self._wrote(outcome, "apply", obj["kind"])
        return live_by_kind

    def _prune(self, gw: Obj, desired: list[Obj], outcome: Outcome) -> None:
        """Delete what we generated once and the settings or policies no longer want: the
        autoscaler, the disruption budget, the extauthz config."""
        namespace, name = gateway.key(gw)
        wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in desired}
        object_names = names.names_for(namespace, name)
        for kind, object_name in (
            (kcluster.AUTOSCALER, object_names.autoscaler),
            (kcluster.DISRUPTION_BUDGET, object_names.disruption_budget),
            (kcluster.CONFIG_MAP, object_names.extauthz_config_map),
        ):
            if (kind.kind, object_name) in wanted:
                continue
            live = self.cluster.get(kind, namespace, object_name)
            if live is not None and ownership_problem(live, gw) is None:
                self.cluster.delete(kind, namespace, object_name)
                self._wrote(outcome, "delete", kind.kind)

    def _programmed(
        self, live: dict[str, Obj], outcome: Outcome, waiting: str
    ) -> tuple[status.Verdict, list[str]]:
        if outcome.foreign:
            return _not_programmed("Invalid", "; ".join(outcome.foreign)), []
        service = live.get("Service") or {}
        address = (service.get("spec") or {}).get("clusterIP")
        addresses = [address] if address and address != "None" else []
        ready = int(((live.get("Deployment") or {}).get("status") or {}).get("readyReplicas") or 0)
        if ready < 1:
            stuck = _rollout_stuck(live.get("Deployment") or {})
            return _not_programmed("Pending", stuck or waiting), addresses
        if not addresses:
            return _not_programmed(
                "AddressNotAssigned", "the Service has no ClusterIP yet"
            ), addresses
        outcome.programmed = True
        return status.Verdict(
            "Programmed", True, "Programmed", f"{ready} ready replica(s)"
        ), addresses

    def _write_gateway_status(
        self,
        gw: Obj,
        accepted: status.Verdict,
        programmed: status.Verdict,
        addresses: list[str],
        outcome: Outcome,
    ) -> None:
        def compute(current: Obj) -> Obj:
            return status.gateway_status(current, accepted, programmed, addresses, self.clock())

        self._update_status(gw, compute, outcome)

    def _update_status(self, obj: Obj, compute: Callable[[Obj], Obj], outcome: Outcome) -> None:
        """Write ``compute(obj)`` as the status unless it is already there; retry on 409."""
        current = obj
        for _ in range(STATUS_RETRIES):
            wanted = compute(current)
            if current.get("status") == wanted:
                return
            try:
                self.cluster.replace_status({**current, "status": wanted})
                self._wrote(outcome, "update-status", str(obj.get("kind")))
                return
            except kcluster.Conflict:
                self.metrics.conflicts.inc()
                meta = current["metadata"]
                fresh = self.cluster.get(
                    kcluster.kind_of(current), meta.get("namespace", ""), meta["name"]
                )
                if fresh is None:
                    return
                current = fresh
        raise kcluster.Conflict(
            f"status of {obj.get('kind')} {obj['metadata'].get('name')}: still conflicting after "
            f"{STATUS_RETRIES} attempts"
        )

    def _wrote(self, outcome: Outcome, verb: str, kind: str) -> None:
        outcome.writes += 1
        self.metrics.writes.labels(verb, kind).inc()

    # --- GatewayClass and routes -------------------------------------------------------

    def reconcile_gateway_class(self, name: str) -> Outcome:
        outcome = Outcome()
        found = self.cluster.get(kcluster.GATEWAY_CLASS, "", name)
        if (
            found is None
            or (found.get("spec") or {}).get("controllerName") != constants.CONTROLLER_NAME
        ):
            return outcome
        self._update_status(
            found, lambda current: status.gateway_class_status(current, self.clock()), outcome
        )
        return outcome

    def reconcile_route_status(self) -> Outcome:
        """Translate the world once and write every judged route's and policy's status."""
        outcome = Outcome()
        world = self.world()
        translation = self.translator(world, self.options.trust_domain)
        for verdict in translation.statuses:
            kind = STATUS_KINDS.get((verdict.ref.group, verdict.ref.kind))
            if kind is None or (kind in ROUTE_KINDS and not verdict.parents):
                continue
            found = self.cluster.get(kind, verdict.ref.namespace, verdict.ref.name)
            if found is None:
                continue
            self._update_status(found, self._status_of(kind, verdict), outcome)
        return outcome

    def _status_of(
        self, kind: kcluster.Kind, verdict: model.ResourceStatus
    ) -> Callable[[Obj], Obj]:
        if kind in ROUTE_KINDS:

            def route(current: Obj) -> Obj:
                parents = status.route_parents(current, verdict, self.clock())
                return {**(current.get("status") or {}), "parents": parents}

            return route

        # Istio's RequestAuthentication: istiod owns its top-level conditions.
        own_conditions = kind.group == constants.POLICY_API_VERSION.split("/")[0]

        def policy(current: Obj) -> Obj:
            return status.policy_status(current, verdict, self.clock(), own_conditions)

        return policy


ROUTE_KINDS = (kcluster.HTTP_ROUTE, kcluster.GRPC_ROUTE)
# (group, kind) of a translation verdict → the kind whose status the controller writes.
STATUS_KINDS = {(kind.group, kind.kind): kind for kind in (*ROUTE_KINDS, *kcluster.POLICY_KINDS)}


def waiting_for(gw: Obj, conf: settings.Settings) -> str:
    """What a waypoint without a ready replica waits for, naming what its pods need.

    The controller cannot see a pod's ImagePullBackOff or a missing Secret (it reads neither
    pods nor Secrets), so it names them for the user to check.
    """
    namespace, name = gateway.key(gw)
    deployment = names.names_for(namespace, name).deployment
    needs = [f"image {conf.envoy_image}"]
    if conf.extauthz_image != conf.envoy_image:
        needs.append(f"image {conf.extauthz_image}")
    if conf.cert_source is settings.CertSource.SECRET:
        needs.append(f"Secret {namespace}/{conf.cert_secret_name(name)} (certSource secret)")
    else:
        needs.append("the csi-driver-spiffe CSI driver (certSource csi)")
    return (
        f"waiting for a ready replica of Deployment {namespace}/{deployment}; its pods need "
        f"{', '.join(needs)} (kubectl -n {namespace} describe pods -l "
        f"{constants.GATEWAY_NAME_LABEL}={name})"
    )


def _rollout_stuck(deployment: Obj) -> str | None:
    """The Deployment controller's verdict once a rollout missed its progress deadline."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("status") == "False":
            return f"Deployment {condition.get('reason')}: {condition.get('message', '')}"
    return None


def _not_programmed(reason: str, message: str) -> status.Verdict:
    return status.Verdict("Programmed", False, reason, message)


def list_world(cluster: kcluster.Cluster) -> list[Obj]:
    """Everything translation reads, listed from the API (the controller uses its caches)."""
    world: list[Obj] = []
    for kind in WORLD_KINDS:
        if cluster.serves(kind):
            world.extend(cluster.list(kind)[0])
    return world


WORLD_KINDS = (
    kcluster.NAMESPACE,
    kcluster.SERVICE,
    kcluster.ENDPOINT_SLICE,
    kcluster.GATEWAY,
    kcluster.HTTP_ROUTE,
    kcluster.GRPC_ROUTE,
    *kcluster.POLICY_KINDS,
)

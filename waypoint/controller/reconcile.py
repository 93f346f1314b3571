"""One reconcile: a Gateway key in, applied objects and status out, with zero writes when
nothing changed.

Desired objects come from ``waypoint.kube`` (pure). Each carries the hash of its own content in
``waypoint.dev/applied-hash``; an object is re-applied only when that hash differs from the
live one or when a field we set has drifted, so an unchanged world costs reads only.

An object is ours only when it carries our managed-by label AND a controller ownerReference to
this Gateway's UID. Anything else in the way (no label, another owner, or our label without an
owner) is never touched, and the Gateway's status says why it is not Programmed. A change to a
field the API server treats as immutable is never attempted: an object of ours is deleted and
created again instead. An apply the API rejects (a 4xx: validation, a webhook, a quota) is
reported as ``Programmed=False`` with the API's reason and message, and the Gateway's other
objects are still applied.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from waypoint import model, names, pipeline, wellknown
from waypoint.controller import apiclient, serving, status
from waypoint.controller import metrics as kmetrics
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, gateway, render, settings

LOG = logging.getLogger(__name__)
APPLIED_HASH = "waypoint.dev/applied-hash"
STATUS_RETRIES = 5

Obj = dict[str, Any]
World = Callable[[], list[Obj]]


# Objects + waypoint key + options → the waypoint's Envoy bootstrap YAML.
Renderer = render.Renderer
Translator = Callable[[Sequence[Mapping[str, Any]], str], model.Translation]


class Reader(Protocol):
    """Where reconciles read objects: the cluster itself, or the controller's informer caches."""

    def get(self, kind: apiclient.Kind, namespace: str, name: str) -> Obj | None: ...

    def owned(self, kind: apiclient.Kind, namespace: str, name: str) -> Obj | None:
        """The object if it may be ours (it carries our managed-by label), else None."""
        ...


class LiveReader:
    """Every read is a GET."""

    def __init__(self, cluster: apiclient.Cluster) -> None:
        self.cluster = cluster

    def get(self, kind: apiclient.Kind, namespace: str, name: str) -> Obj | None:
        return self.cluster.get(kind, namespace, name)

    def owned(self, kind: apiclient.Kind, namespace: str, name: str) -> Obj | None:
        return self.cluster.get(kind, namespace, name)


@dataclasses.dataclass
class Outcome:
    """What one reconcile did; ``foreign`` lists objects left alone, ``rejected`` the applies
    the API server refused as (reason, message), ``recreated`` objects of ours deleted and
    created again because an immutable field had to change."""

    writes: int = 0
    foreign: list[str] = dataclasses.field(default_factory=list)
    rejected: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    recreated: list[str] = dataclasses.field(default_factory=list)
    programmed: bool = False


# Fields the API server refuses to change once set (a 422 "field is immutable"): Kubernetes
# pkg/apis/apps/validation/validation.go ValidateDeploymentUpdate (spec.selector, apps/v1) and
# pkg/apis/core/validation/validation.go ValidateServiceUpdate (spec.clusterIP/clusterIPs).
IMMUTABLE_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": (("spec", "selector"),),
    "Service": (("spec", "clusterIP"), ("spec", "clusterIPs")),
}
# A condition reason, as metav1.Condition validates it.
REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def _field(obj: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = obj
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def immutable_changes(live: Mapping[str, Any], desired: Mapping[str, Any]) -> list[str]:
    """The immutable fields ``desired`` sets to something other than their live value."""
    changed = []
    for path in IMMUTABLE_FIELDS.get(str(desired.get("kind")), ()):
        wanted, current = _field(desired, path), _field(live, path)
        if wanted is not None and current is not None and wanted != current:
            changed.append(".".join(path))
    return changed


def rejected_by_api(exc: apiclient.ClusterError) -> bool:
    """The server refused the request itself (validation, admission, quota, RBAC): retrying
    the same body cannot help. Conflicts, throttling and transport errors are retried."""
    return 400 <= exc.status < 500 and exc.status not in (408, 409, 410, 429)


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
    if labels.get(wellknown.MANAGED_BY_LABEL) != wellknown.MANAGED_BY_VALUE:
        return (
            f"{where} exists and is not managed by {wellknown.MANAGED_BY_VALUE} "
            f"(no {wellknown.MANAGED_BY_LABEL}={wellknown.MANAGED_BY_VALUE} label); left alone"
        )
    uid = (gw.get("metadata") or {}).get("uid")
    owners = [ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")]
    if uid and any(ref.get("uid") == uid for ref in owners):
        return None
    if owners:
        return f"{where} belongs to another owner ({owners[0].get('kind')} {owners[0].get('name')}); left alone"
    namespace, name = gateway.key(gw)
    return (
        f"{where} has the {wellknown.MANAGED_BY_LABEL}={wellknown.MANAGED_BY_VALUE} label but "
        f"no controller ownerReference to Gateway {namespace}/{name}; not adopted, left alone"
    )


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    """Reconciles Gateways, the GatewayClass and route status against one cluster."""

    def __init__(
        self,
        cluster: apiclient.Cluster,
        world: World,
        renderer: Renderer = pipeline.render,
        translator: Translator = pipeline.translate_objects,
        options: envoy_options.BootstrapOptions | None = None,
        defaults: settings.Settings | None = None,
        metrics: kmetrics.Metrics | None = None,
        clock: Callable[[], str] = utc_now,
        xds_error: Callable[[str, str], str | None] | None = None,
        reader: Reader | None = None,
        class_verdicts: Callable[[], list[status.Verdict]] | None = None,
        revision: str = "",
    ) -> None:
        self.cluster = cluster
        # Gateways labelled istio.io/rev for another revision belong to another controller.
        self.revision = revision
        self.reader: Reader = reader or LiveReader(cluster)
        # Extra GatewayClass conditions (which optional kinds the controller cannot read).
        self.class_verdicts = class_verdicts
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
        gw = self.cluster.get(apiclient.GATEWAY, namespace, name)
        if gw is None or not gateway.is_waypoint(gw) or not gateway.managed_by(gw, self.revision):
            self.metrics.forget_gateway(namespace, name)
            # Deleted (the garbage collector removes what it owned), or another revision's.
            return outcome
        problems = gateway.problems(gw)
        conf = None if problems else self._settings(gw, problems)
        if conf is None:
            accepted = status.Verdict("Accepted", False, "InvalidParameters", "; ".join(problems))
            return self._not_accepted(gw, accepted, outcome)
        try:
            plan = render.gateway_plan(
                gw, conf, self.world(), self.options, self.renderer, self._config_map
            )
        except (pipeline.WaypointNotFound, ValueError) as exc:
            # The last applied objects stay: a bad input never takes a running waypoint down.
            reason = "InvalidParameters" if isinstance(exc, settings.SettingsError) else "Invalid"
            accepted = status.Verdict("Accepted", False, reason, str(exc))
            return self._not_accepted(gw, accepted, outcome)
        live = self._apply_all(gw, plan.objects, outcome)
        self._prune(gw, plan.objects, outcome)
        accepted = status.Verdict("Accepted", True, "Accepted", "waypoint accepted")
        programmed, addresses = self._programmed(live, outcome, waiting_for(gw, conf))
        rejected = self.xds_error(namespace, name) if self.xds_error else None
        if rejected:
            programmed = _not_programmed("Invalid", rejected)
            outcome.programmed = False
        bound = serving.verdict(plan.rendered.translation, plan.rendered.waypoint)
        observed = status.Listeners(attached_routes=len(serving.routes(plan.rendered.waypoint)))
        self._write_gateway_status(gw, accepted, programmed, addresses, outcome, [bound], observed)
        self.metrics.foreign.labels(namespace, name).set(len(outcome.foreign))
        self.metrics.rejected.labels(namespace, name).set(len(outcome.rejected))
        return outcome

    def _not_accepted(self, gw: Obj, accepted: status.Verdict, outcome: Outcome) -> Outcome:
        """Report why the Gateway is not accepted; nothing of it is applied (or measured)."""
        not_programmed = _not_programmed("Invalid", "not accepted")
        self._write_gateway_status(gw, accepted, not_programmed, [], outcome)
        self.metrics.forget_gateway(*gateway.key(gw))
        return outcome

    def _settings(self, gw: Obj, problems: list[str]) -> settings.Settings | None:
        namespace, name = gateway.key(gw)
        try:
            class_config = self._class_config_map(problems)
            ref = settings.parameters_ref(gw)
            config_map = None
            if ref:
                config_map = self.reader.get(apiclient.CONFIG_MAP, namespace, ref)
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
        return self.reader.get(apiclient.CONFIG_MAP, namespace, name)

    def _class_config_map(self, problems: list[str]) -> Obj | None:
        """The class-wide defaults ConfigMap named by the GatewayClass's parametersRef."""
        gateway_class = self.reader.get(apiclient.GATEWAY_CLASS, "", wellknown.GATEWAY_CLASS)
        ref = settings.class_parameters_ref(gateway_class) if gateway_class else None
        if ref is None:
            return None
        found = self.reader.get(apiclient.CONFIG_MAP, *ref)
        if found is None:
            problems.append(_class_config_missing(wellknown.GATEWAY_CLASS, ref))
        return found

    def class_parameters_problem(self, gateway_class: Obj) -> str | None:
        """Why the GatewayClass's own parametersRef is unusable (bad reference, missing
        ConfigMap, a value no Gateway could use), or None."""
        name = str((gateway_class.get("metadata") or {}).get("name") or "")
        try:
            ref = settings.class_parameters_ref(gateway_class)
            if ref is None:
                return None
            found = self.reader.get(apiclient.CONFIG_MAP, *ref)
            if found is None:
                return _class_config_missing(name, ref)
            settings.check_class_config(gateway_class, found, self.defaults)
        except settings.SettingsError as exc:
            return str(exc)
        return None

    def _apply_all(self, gw: Obj, desired: list[Obj], outcome: Outcome) -> dict[str, Obj]:
        live_by_kind: dict[str, Obj] = {}
        for obj in desired:
            wanted = stamp(obj)
            kind = apiclient.kind_of(obj)
            namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            live = self.reader.get(kind, namespace, name)
            if live is not None:
                problem = ownership_problem(live, gw)
                if problem:
                    LOG.warning("%s", problem)
                    outcome.foreign.append(problem)
                    continue
                if contains(live, wanted):
                    live_by_kind[obj["kind"]] = live
                    continue
                live = self._recreate_if_immutable(live, wanted, outcome)
            try:
                live_by_kind[obj["kind"]] = self.cluster.apply(wanted)
            except apiclient.ClusterError as exc:
                if not rejected_by_api(exc):
                    raise
                # Report it and go on: the Gateway's other objects still apply.
                LOG.warning("%s", exc)
                reason = exc.reason if REASON.match(exc.reason or "") else "Invalid"
                outcome.rejected.append((reason, str(exc)))
                if live is not None:
                    live_by_kind[obj["kind"]] = live
                continue
            self._wrote(outcome, "apply", obj["kind"])
        return live_by_kind

    def _recreate_if_immutable(self, live: Obj, wanted: Obj, outcome: Outcome) -> Obj | None:
        """Delete ``live`` (ours) when ``wanted`` changes a field the API cannot change: the
        apply then creates it afresh. Returns what is live afterwards."""
        changed = immutable_changes(live, wanted)
        if not changed:
            return live
        meta = wanted["metadata"]
        where = f"{wanted['kind']} {meta['namespace']}/{meta['name']}"
        LOG.warning("%s: %s cannot change in place; recreating it", where, ", ".join(changed))
        self.cluster.delete(apiclient.kind_of(wanted), meta["namespace"], meta["name"])
        self._wrote(outcome, "delete", str(wanted["kind"]))
        outcome.recreated.append(f"{where} ({', '.join(changed)})")
        return None

    def _prune(self, gw: Obj, desired: list[Obj], outcome: Outcome) -> None:
        """Delete what we generated once and the settings or policies no longer want: the
        autoscaler, the disruption budget, the extauthz config."""
        namespace, name = gateway.key(gw)
        wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in desired}
        object_names = names.names_for(namespace, name)
        for kind, object_name in (
            (apiclient.AUTOSCALER, object_names.autoscaler),
            (apiclient.DISRUPTION_BUDGET, object_names.disruption_budget),
            (apiclient.CONFIG_MAP, object_names.extauthz_config_map),
        ):
            if (kind.kind, object_name) in wanted:
                continue
            live = self.reader.owned(kind, namespace, object_name)
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
        if outcome.rejected:
            message = "; ".join(message for _, message in outcome.rejected)
            return _not_programmed(outcome.rejected[0][0], message), addresses
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
        extra: Sequence[status.Verdict] = (),
        observed: status.Listeners | None = None,
    ) -> None:
        # The Gateway this status judged, as --wait needs it (labels and annotations do not
        # move the generation).
        judged = dataclasses.replace(
            accepted, message=f"{accepted.message} {gateway.observed_marker(gw)}"
        )

        def compute(current: Obj) -> Obj:
            return status.gateway_status(
                current, judged, programmed, addresses, self.clock(), extra, observed
            )

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
            except apiclient.Conflict:
                self.metrics.conflicts.inc()
                meta = current["metadata"]
                fresh = self.cluster.get(
                    apiclient.kind_of(current), meta.get("namespace", ""), meta["name"]
                )
                if fresh is None:
                    return
                current = fresh
        raise apiclient.Conflict(
            f"status of {obj.get('kind')} {obj['metadata'].get('name')}: still conflicting after "
            f"{STATUS_RETRIES} attempts"
        )

    def _wrote(self, outcome: Outcome, verb: str, kind: str) -> None:
        outcome.writes += 1
        self.metrics.writes.labels(verb, kind).inc()

    # --- GatewayClass and routes -------------------------------------------------------

    def reconcile_gateway_class(self, name: str) -> Outcome:
        outcome = Outcome()
        found = self.reader.get(apiclient.GATEWAY_CLASS, "", name)
        if (
            found is None
            or (found.get("spec") or {}).get("controllerName") != constants.CONTROLLER_NAME
        ):
            return outcome
        problem = self.class_parameters_problem(found)
        extra = self.class_verdicts() if self.class_verdicts else []
        self._update_status(
            found,
            lambda current: status.gateway_class_status(current, self.clock(), problem, extra),
            outcome,
        )
        return outcome

    def reconcile_route_status(self) -> Outcome:
        """Translate the world once and write every judged route's and policy's status."""
        outcome = Outcome()
        world = self.world()
        translation = self.translator(world, self.options.trust_domain)
        self._service_status(world, translation, outcome)
        for verdict in translation.statuses:
            if verdict.ref.kind == "Service" and not verdict.ref.group:
                continue  # written above, with the Service's other conditions kept
            kind = STATUS_KINDS.get((verdict.ref.group, verdict.ref.kind))
            if kind is None or (kind in ROUTE_KINDS and not verdict.parents):
                continue
            found = self.reader.get(kind, verdict.ref.namespace, verdict.ref.name)
            if found is None:
                continue
            self._update_status(found, self._status_of(kind, verdict), outcome)
        return outcome

    def _service_status(
        self, world: Sequence[Obj], translation: model.Translation, outcome: Outcome
    ) -> None:
        """Istio's ``istio.io/WaypointBound`` condition on every Service that names a
        waypoint; removed again from a Service that no longer does."""
        bound: dict[tuple[str, str], model.Condition] = {}
        for verdict in translation.statuses:
            if verdict.ref.kind != "Service" or verdict.ref.group:
                continue
            for cond in verdict.conditions:
                if cond.type == status.WAYPOINT_BOUND:
                    bound[(verdict.ref.namespace, verdict.ref.name)] = cond
        for obj in world:
            if obj.get("kind") != "Service" or obj.get("apiVersion") != "v1":
                continue
            meta = obj.get("metadata") or {}
            judged = bound.get((str(meta.get("namespace") or ""), str(meta.get("name") or "")))
            conditions = (obj.get("status") or {}).get("conditions") or []
            if judged is None and not any(
                c.get("type") == status.WAYPOINT_BOUND for c in conditions
            ):
                continue

            def compute(current: Obj, judged: model.Condition | None = judged) -> Obj:
                return status.waypoint_bound(current, judged, self.clock())

            self._update_status(obj, compute, outcome)

    def _status_of(
        self, kind: apiclient.Kind, verdict: model.ResourceStatus
    ) -> Callable[[Obj], Obj]:
        if kind in ROUTE_KINDS:

            def route(current: Obj) -> Obj:
                parents = status.route_parents(current, verdict, self.clock())
                return {**(current.get("status") or {}), "parents": parents}

            return route

        # Istio's RequestAuthentication and AuthorizationPolicy: istiod owns their top-level
        # conditions.
        own_conditions = kind.group == wellknown.POLICY_API_VERSION.split("/")[0]

        def policy(current: Obj) -> Obj:
            return status.policy_status(current, verdict, self.clock(), own_conditions)

        return policy


ROUTE_KINDS = (apiclient.HTTP_ROUTE, apiclient.GRPC_ROUTE)
# (group, kind) of a translation verdict → the kind whose status the controller writes.
STATUS_KINDS = {
    (kind.group, kind.kind): kind
    for kind in (*ROUTE_KINDS, *apiclient.POLICY_KINDS, apiclient.SERVICE)
}


def _class_config_missing(class_name: str, ref: tuple[str, str]) -> str:
    return f"GatewayClass {class_name}: parametersRef ConfigMap {ref[0]}/{ref[1]} not found"


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
        f"{wellknown.GATEWAY_NAME_LABEL}={name})"
    )


def _rollout_stuck(deployment: Obj) -> str | None:
    """The Deployment controller's verdict once a rollout missed its progress deadline."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("status") == "False":
            return f"Deployment {condition.get('reason')}: {condition.get('message', '')}"
    return None


def _not_programmed(reason: str, message: str) -> status.Verdict:
    return status.Verdict("Programmed", False, reason, message)


def list_world(cluster: apiclient.Cluster) -> list[Obj]:
    """Everything translation reads, listed from the API (the controller uses its caches)."""
    world: list[Obj] = []
    for kind in WORLD_KINDS:
        if cluster.serves(kind):
            world.extend(cluster.list(kind)[0])
    return world


WORLD_KINDS = (
    apiclient.NAMESPACE,
    # Its annotations and labels are inputs too (Istio's inbound binding, waypoint-for).
    apiclient.GATEWAY_CLASS,
    apiclient.SERVICE,
    apiclient.ENDPOINT_SLICE,
    apiclient.POD,
    apiclient.GATEWAY,
    apiclient.HTTP_ROUTE,
    apiclient.GRPC_ROUTE,
    *apiclient.POLICY_KINDS,
)

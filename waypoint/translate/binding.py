"""Which waypoint serves which Service and which workload.

Binding uses the labels Istio users already know:

* ``istio.io/use-waypoint: <name>`` on a Namespace, a Service or a Pod names the waypoint; the
  object's own label overrides its Namespace's, and the value ``none`` opts the object out.
* ``istio.io/use-waypoint-namespace: <ns>``, read from the same object as ``use-waypoint``,
  names a waypoint in another namespace. It is honoured only when that waypoint's ``mesh``
  listener admits the object's namespace through ``allowedRoutes.namespaces`` (``from: Same``,
  the default, admits only the waypoint's own namespace; ``All`` admits every namespace;
  ``Selector`` matches ``matchLabels``/``matchExpressions`` against the Namespace's labels,
  including the ``kubernetes.io/metadata.name`` label Kubernetes sets). The same check applies
  to every binding, so a Selector that leaves out the waypoint's own namespace shuts it too.
* ``istio.io/waypoint-for`` on the Gateway (``service`` by default, ``workload``, ``all`` or
  ``none``) says which traffic the waypoint takes: a Service's VIP traffic, traffic addressed to a
  Pod IP, both, or neither.

Per-service-account waypoints
-----------------------------
Istio once had waypoints scoped to one ServiceAccount and dropped them; we keep them. A
Gateway annotated ``istio.io/for-service-account: <sa>`` (Istio's historical name) is scoped to
ServiceAccount ``<sa>`` of its own namespace:

* Its own identity does not change: it is always ``spiffe://<td>/ns/<gw ns>/sa/<gw name>``,
  because the waypoint's pods run as a ServiceAccount named after the Gateway (as in Istio).
  The scope restricts what it serves, never who it is.
* It serves only workloads (Pods) that run as ``<sa>``, and only Services all of whose known
  Pods run as ``<sa>``. A Service's Pods are those its EndpointSlices point at (``targetRef``, or
  a Pod object with the endpoint's IP) and the Pod objects its selector picks; a Pod's account
  is ``spec.serviceAccountName`` (``default`` when unset). A Service none of whose Pods is known
  cannot be checked and is not served.
* A Service or Pod bound to a scoped waypoint that does not qualify is not served, and gets an
  ``istio.io/WaypointBound: False`` condition with reason ``ServiceAccountMismatch`` (or
  ``ServiceAccountUnknown``). A Pod that merely inherits its Namespace's binding is left out
  silently instead, since only its own label makes the binding a claim about that Pod.
* Preference (Istio's old behaviour): in a namespace enrolled with ``use-waypoint: X``, a
  Service without its own label whose Pods all run as ``s``, or a Pod running as ``s``, is served
  by a waypoint scoped to ``s`` in the same namespace (the first by name, if several), when that
  waypoint takes the matching traffic and admits the namespace, instead of by ``X``. Explicit
  labels on the Service or Pod always win over this preference.

A gateway's own Service and Pods (labelled ``gateway.networking.k8s.io/gateway-name``, as the
controller makes them) never bind: the waypoint must not capture its own traffic.

Statuses: every Namespace with a ``use-waypoint`` label, every Service bound by its own or its
Namespace's label, and every Pod with its own label gets an ``istio.io/WaypointBound``
condition saying whether the binding took and, if not, why (waypoint missing or rejected, not
admitted by ``allowedRoutes``, waypoint not taking that kind of traffic, account scope,
headless or ExternalName Service, no cluster IP).
"""

from __future__ import annotations

import dataclasses

from waypoint import model, wellknown
from waypoint.translate import gateways, index, services, status

NONE = "none"


@dataclasses.dataclass(frozen=True)
class Target:
    """The waypoint an object's labels name, and where the naming came from."""

    namespace: str
    name: str
    via: str  # "Service ns/name label", "Namespace ns label", ...
    explicit: bool

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass
class Bindings:
    """The outcome: who is served by which waypoint, and why the others are not."""

    services: dict[tuple[str, str], gateways.WaypointSpec] = dataclasses.field(default_factory=dict)
    workloads: dict[tuple[str, str], gateways.WaypointSpec] = dataclasses.field(
        default_factory=dict
    )
    service_problems: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)


def _traffic(spec: gateways.WaypointSpec) -> str:
    if spec.traffic_type is model.TrafficType.NONE:
        return "no traffic"
    return f"{spec.traffic_type.value} traffic"


def _label_target(
    labels: dict[str, str], own_namespace: str, via: str, explicit: bool
) -> Target | None:
    name = labels.get(wellknown.USE_WAYPOINT) or None
    if name is None or name == NONE:
        return None
    namespace = labels.get(wellknown.USE_WAYPOINT_NAMESPACE) or own_namespace
    return Target(namespace, name, via, explicit)


class Binder:
    def __init__(
        self,
        idx: index.Index,
        world: services.World,
        waypoints: dict[tuple[str, str], gateways.WaypointSpec],
        book: status.Book,
    ) -> None:
        self.idx, self.world, self.waypoints, self.book = idx, world, waypoints, book

    def bind(self) -> Bindings:
        result = Bindings()
        self._namespaces()
        for key, svc in self.world.services.items():
            spec, cond = self._service(svc)
            if cond is None:
                continue
            self.book.add(svc.obj.ref, cond)
            if spec is not None:
                result.services[key] = spec
            else:
                result.service_problems[key] = cond.message
        for key, pod in self.world.pods.items():
            spec = self._workload(pod)
            if spec is not None:
                result.workloads[key] = spec
        return result

    # --- shared checks ----------------------------------------------------------------

    def _lookup(
        self, target: Target, namespace: str
    ) -> tuple[gateways.WaypointSpec | None, model.Condition]:
        spec = self.waypoints.get((target.namespace, target.name))
        if spec is None:
            reason = gateways.rejection(self.idx, (target.namespace, target.name))
            return None, status.fail(
                status.WAYPOINT_BOUND,
                status.R_WAYPOINT_NOT_FOUND,
                f"{target.via} names waypoint {target}: {reason}",
            )
        if not spec.allowed.admits(spec.namespace, namespace, self.idx.namespace_labels(namespace)):
            return None, status.fail(
                status.WAYPOINT_BOUND,
                status.R_WAYPOINT_NOT_ALLOWED,
                f"{target.via} names waypoint {target}, whose listener's allowedRoutes.namespaces "
                f"(from: {spec.allowed.source}) does not admit namespace {namespace}",
            )
        return spec, status.ok(
            status.WAYPOINT_BOUND,
            status.R_WAYPOINT_ACCEPTED,
            f"bound to waypoint {spec} by {target.via}",
        )

    def _preferred(
        self, namespace: str, account: str, for_services: bool
    ) -> gateways.WaypointSpec | None:
        for spec in self.waypoints.values():  # sorted by (namespace, name)
            if spec.namespace != namespace or spec.service_account != account:
                continue
            takes = spec.serves_services if for_services else spec.serves_workloads
            labels = self.idx.namespace_labels(namespace)
            if takes and spec.allowed.admits(spec.namespace, namespace, labels):
                return spec
        return None

    # --- namespaces -------------------------------------------------------------------

    def _namespaces(self) -> None:
        for name, obj in self.idx.namespaces.items():
            target = _label_target(dict(obj.labels), name, f"Namespace {name} label", True)
            if target is not None:
                self.book.add(obj.ref, self._lookup(target, name)[1])

    # --- services ---------------------------------------------------------------------

    def _service_target(self, svc: services.ServiceInfo) -> Target | None:
        if wellknown.GATEWAY_NAME_LABEL in svc.obj.labels:
            return None  # a gateway's own Service: capturing it would loop the waypoint
        labels = dict(svc.obj.labels)
        if labels.get(wellknown.USE_WAYPOINT):
            return _label_target(
                labels, svc.namespace, f"Service {svc.namespace}/{svc.name} label", True
            )
        target = _label_target(
            self.idx.namespace_labels(svc.namespace),
            svc.namespace,
            f"Namespace {svc.namespace} label",
            False,
        )
        if target is None:
            return None
        accounts = self.world.service_accounts(svc)
        if len(accounts) == 1:
            (account,) = accounts
            preferred = self._preferred(svc.namespace, account, for_services=True)
            if preferred is not None:
                via = f"ServiceAccount {account} of the Service's pods (namespace {svc.namespace} is enrolled)"
                return Target(preferred.namespace, preferred.name, via, False)
        return target

    def _service(
        self, svc: services.ServiceInfo
    ) -> tuple[gateways.WaypointSpec | None, model.Condition | None]:
        target = self._service_target(svc)
        if target is None:
            return None, None
        spec, cond = self._lookup(target, svc.namespace)
        if spec is None:
            return None, cond
        problem = self._service_problem(svc, spec) or self._shape_problem(svc)
        if problem is not None:
            return None, status.fail(
                status.WAYPOINT_BOUND, problem[0], f"waypoint {spec}: {problem[1]}"
            )
        return spec, cond

    def _service_problem(
        self, svc: services.ServiceInfo, spec: gateways.WaypointSpec
    ) -> tuple[str, str] | None:
        if not spec.serves_services:
            return (
                status.R_WAYPOINT_WRONG_TRAFFIC,
                f"takes {_traffic(spec)}, not service traffic "
                f"({wellknown.WAYPOINT_FOR}={spec.traffic_type.value})",
            )
        if spec.service_account is None:
            return None
        accounts = self.world.service_accounts(svc)
        if not accounts:
            return (
                status.R_SERVICE_ACCOUNT_UNKNOWN,
                f"serves only ServiceAccount {spec.service_account}, and no pod of the Service is "
                "known (no Pod object or EndpointSlice targetRef) to check its account",
            )
        if accounts != {spec.service_account}:
            return (
                status.R_SERVICE_ACCOUNT_MISMATCH,
                f"serves only ServiceAccount {spec.service_account}, but the Service's pods run as "
                f"{', '.join(sorted(accounts))}",
            )
        return None

    @staticmethod
    def _shape_problem(svc: services.ServiceInfo) -> tuple[str, str] | None:
        if svc.type == "ExternalName":
            return (status.R_UNSUPPORTED_SERVICE, "an ExternalName Service has no VIP to capture")
        if svc.headless:
            return (
                status.R_NO_ADDRESS,
                "a headless Service (clusterIP: None) has no VIP to capture; bind its pods for "
                "workload traffic instead",
            )
        if not svc.addresses:
            return (
                status.R_NO_ADDRESS,
                "the Service has no spec.clusterIP(s) yet (the API server assigns them; set them "
                "when rendering offline)",
            )
        return None

    # --- workloads --------------------------------------------------------------------

    def _workload_target(self, pod: services.PodInfo) -> Target | None:
        labels = dict(pod.labels)
        if labels.get(wellknown.USE_WAYPOINT):
            return _label_target(
                labels, pod.namespace, f"Pod {pod.namespace}/{pod.name} label", True
            )
        target = _label_target(
            self.idx.namespace_labels(pod.namespace),
            pod.namespace,
            f"Namespace {pod.namespace} label",
            False,
        )
        if target is not None and pod.service_account is not None:
            preferred = self._preferred(pod.namespace, pod.service_account, for_services=False)
            if preferred is not None:
                via = (
                    f"ServiceAccount {pod.service_account} (namespace {pod.namespace} is enrolled)"
                )
                return Target(preferred.namespace, preferred.name, via, False)
        return target

    def _workload(self, pod: services.PodInfo) -> gateways.WaypointSpec | None:
        if wellknown.GATEWAY_NAME_LABEL in pod.labels:
            return None  # a gateway's own pod never sends its traffic through a waypoint
        target = self._workload_target(pod)
        if target is None:
            return None
        spec, cond = self._lookup(target, pod.namespace)
        problem = None if spec is None else self._workload_problem(pod, spec)
        if target.explicit:
            if problem is not None:
                cond = status.fail(
                    status.WAYPOINT_BOUND, problem[0], f"waypoint {spec}: {problem[1]}"
                )
            self.book.add(pod.ref, cond)
        return spec if problem is None else None

    @staticmethod
    def _workload_problem(
        pod: services.PodInfo, spec: gateways.WaypointSpec
    ) -> tuple[str, str] | None:
        if not spec.serves_workloads:
            return (
                status.R_WAYPOINT_WRONG_TRAFFIC,
                f"takes {_traffic(spec)}, not workload traffic "
                f"({wellknown.WAYPOINT_FOR}={spec.traffic_type.value})",
            )
        if spec.service_account is not None and pod.service_account != spec.service_account:
            return (
                status.R_SERVICE_ACCOUNT_MISMATCH,
                f"serves only ServiceAccount {spec.service_account}, but the pod runs as "
                f"{pod.service_account or 'an unknown account'}",
            )
        if not pod.addresses:
            return (status.R_NO_ADDRESS, "the pod has no IP (not running yet, or finished)")
        return None


def bind(
    idx: index.Index,
    world: services.World,
    waypoints: dict[tuple[str, str], gateways.WaypointSpec],
    book: status.Book,
) -> Bindings:
    return Binder(idx, world, waypoints, book).bind()

"""Services, EndpointSlices and Pods: ports, protocols, endpoints and upstream clusters.

Protocols follow Istio: a port's ``appProtocol`` decides when set (``http``,
``kubernetes.io/ws`` and ``grpc-web`` are HTTP; ``http2``, ``grpc`` and ``kubernetes.io/h2c``
are HTTP/2), else the port name's prefix before ``-`` does (``http``, ``http2``, ``grpc``);
anything else is opaque TCP. Endpoints come from EndpointSlices labelled
``kubernetes.io/service-name``; the slice port is found by the Service port's name, and when the
slice has no such port the Service's numeric ``targetPort`` is used. Not-ready endpoints are
skipped. An endpoint is in the mesh (reached over HBONE) when its Pod, or failing a Pod label its
namespace, carries ``istio.io/dataplane-mode: ambient``; a Pod label ``none`` opts out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

from waypoint import model, names, wellknown
from waypoint.translate import fields, index, status

AMBIENT = "ambient"
_HTTP_APP = {"kubernetes.io/ws": model.Protocol.HTTP, "kubernetes.io/h2c": model.Protocol.HTTP2}
_PREFIXES = {
    "http": model.Protocol.HTTP,
    "http2": model.Protocol.HTTP2,
    "grpc": model.Protocol.HTTP2,
}


def detect_protocol(name: str | None, app_protocol: str | None) -> model.Protocol:
    """Istio's rule: appProtocol if set, else the port name's prefix; TCP when unknown."""
    label = (app_protocol or name or "").lower()
    if app_protocol and label in _HTTP_APP:
        return _HTTP_APP[label]
    if label.startswith("grpc-web"):
        return model.Protocol.HTTP
    return _PREFIXES.get(label.split("-", 1)[0], model.Protocol.TCP)


def normalize_ip(text: str, path: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise fields.Bad(f"{path}: {text!r} is not an IP address") from None


@dataclasses.dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target: int | str | None
    protocol: model.Protocol


@dataclasses.dataclass(frozen=True)
class ServiceInfo:
    obj: index.Obj
    type: str
    addresses: tuple[str, ...]
    headless: bool
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] | None

    @property
    def namespace(self) -> str:
        return self.obj.namespace

    @property
    def name(self) -> str:
        return self.obj.name

    @property
    def host(self) -> names.HostRef:
        return names.HostRef("svc", self.namespace, self.name)

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)

    def named_port(self, name: str) -> ServicePort | None:
        return next((p for p in self.ports if p.name == name), None)


@dataclasses.dataclass(frozen=True)
class SlicePort:
    name: str
    port: int | None
    app_protocol: str | None


@dataclasses.dataclass(frozen=True)
class SliceEndpoint:
    address: str
    pod: tuple[str, str] | None


@dataclasses.dataclass(frozen=True)
class SliceInfo:
    obj: index.Obj
    service: str
    ports: tuple[SlicePort, ...]
    endpoints: tuple[SliceEndpoint, ...]  # ready ones only


@dataclasses.dataclass(frozen=True)
class PodInfo:
    """A workload: a Pod object, or a Pod known only from an EndpointSlice ``targetRef``."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    service_account: str | None
    addresses: tuple[str, ...]
    container_ports: tuple[tuple[str, int], ...]
    known: bool
    ref: model.ObjectRef

    @property
    def host(self) -> names.HostRef:
        return names.HostRef("pod", self.namespace, self.name)


class World:
    """Parsed Services, slices and Pods, with endpoint and cluster lookups."""

    def __init__(self, idx: index.Index, book: status.Book) -> None:
        self.index = idx
        self.services: dict[tuple[str, str], ServiceInfo] = {}
        for key, obj in idx.services.items():
            try:
                self.services[key] = _service(obj)
            except fields.Bad as exc:
                book.add(obj.ref, status.fail(status.ACCEPTED, status.R_INVALID, str(exc)))
        self.slices: dict[tuple[str, str], list[SliceInfo]] = {}
        for obj in idx.slices.values():
            try:
                info = _slice(obj)
            except fields.Bad as exc:
                book.add(obj.ref, status.fail(status.ACCEPTED, status.R_INVALID, str(exc)))
                continue
            if info is not None:
                self.slices.setdefault((obj.namespace, info.service), []).append(info)
        self.pods = self._pods(book)
        self._by_address = {
            (pod.namespace, address): pod for pod in self.pods.values() for address in pod.addresses
        }
        # Built once so that per-Service and per-Pod lookups never scan every Pod or slice,
        # which made translation quadratic in the number of workloads.
        self._by_label = _label_index(self.pods)
        self._slices_of_pod = self._pod_slices()
        self._clusters: dict[tuple[str, str, ServicePort, bool], model.Cluster] = {}

    def _pods(self, book: status.Book) -> dict[tuple[str, str], PodInfo]:
        pods: dict[tuple[str, str], PodInfo] = {}
        for key, obj in self.index.pods.items():
            try:
                pods[key] = _pod(obj)
            except fields.Bad as exc:
                book.add(obj.ref, status.fail(status.ACCEPTED, status.R_INVALID, str(exc)))
        seen: dict[tuple[str, str], set[str]] = {}
        for slices in self.slices.values():
            for info in slices:
                for ep in info.endpoints:
                    if ep.pod is not None and ep.pod not in pods:
                        seen.setdefault(ep.pod, set()).add(ep.address)
        for (namespace, name), addresses in sorted(seen.items()):
            ref = model.ObjectRef(wellknown.CORE_GROUP, "Pod", namespace, name)
            pods[(namespace, name)] = PodInfo(
                namespace, name, {}, None, tuple(sorted(addresses)), (), False, ref
            )
        return dict(sorted(pods.items()))

    def _pod_slices(self) -> dict[tuple[str, str], list[SliceInfo]]:
        """The slices that list each Pod, once each, in slice order."""
        found: dict[tuple[str, str], list[SliceInfo]] = {}
        for slices in self.slices.values():
            for info in slices:
                listed = {
                    _pod_key(pod) for ep in info.endpoints if (pod := self._endpoint_pod(info, ep))
                }
                for key in sorted(listed):
                    found.setdefault(key, []).append(info)
        return found

    # --- mesh membership -------------------------------------------------------------

    def in_mesh(self, namespace: str, pod: PodInfo | None) -> bool:
        mode = pod.labels.get(wellknown.DATAPLANE_MODE_LABEL) if pod else None
        if mode in (AMBIENT, "none"):
            return mode == AMBIENT
        return self.index.namespace_labels(namespace).get(wellknown.DATAPLANE_MODE_LABEL) == AMBIENT

    # --- service pods ----------------------------------------------------------------

    def service_pods(self, svc: ServiceInfo) -> list[PodInfo]:
        """Pods behind a Service: slice targetRefs, plus Pod objects its selector picks."""
        found: dict[tuple[str, str], PodInfo] = {}
        for info in self.slices.get((svc.namespace, svc.name), []):
            for ep in info.endpoints:
                pod = self._endpoint_pod(info, ep)
                if pod is not None:
                    found[(pod.namespace, pod.name)] = pod
        if svc.selector:
            for pod in self._selected(svc.namespace, svc.selector):
                found[_pod_key(pod)] = pod
        return [found[key] for key in sorted(found)]

    def _selected(self, namespace: str, selector: Mapping[str, str]) -> list[PodInfo]:
        """Known Pods of the namespace carrying every label of a non-empty selector."""
        candidates = min(
            (self._by_label.get((namespace, k, v), []) for k, v in selector.items()), key=len
        )
        return [p for p in candidates if all(p.labels.get(k) == v for k, v in selector.items())]

    def service_accounts(self, svc: ServiceInfo) -> set[str]:
        return {p.service_account for p in self.service_pods(svc) if p.service_account}

    def _endpoint_pod(self, info: SliceInfo, ep: SliceEndpoint) -> PodInfo | None:
        if ep.pod is not None:
            return self.pods.get(ep.pod)
        return self._by_address.get((info.obj.namespace, ep.address))

    # --- endpoints and clusters -------------------------------------------------------

    def endpoints(self, svc: ServiceInfo, port: ServicePort) -> tuple[model.Endpoint, ...]:
        found: set[model.Endpoint] = set()
        for info in self.slices.get((svc.namespace, svc.name), []):
            number = _slice_port(info, port)
            if number is None:
                continue
            for ep in info.endpoints:
                pod = self._endpoint_pod(info, ep)
                found.add(
                    model.Endpoint(
                        address=ep.address,
                        port=number,
                        hbone=self.in_mesh(pod.namespace if pod else info.obj.namespace, pod),
                        service_account=pod.service_account if pod else None,
                        pod=pod.name if pod else None,
                    )
                )
        return tuple(sorted(found, key=_endpoint_key))

    def service_cluster(
        self, svc: ServiceInfo, port: ServicePort, grpc: bool = False
    ) -> model.Cluster:
        # Every route to a Service port asks for the same cluster: built once per World (one
        # translation), which keeps the garbage per route, and so the collector's work, small.
        key = (svc.namespace, svc.name, port, grpc)
        cluster = self._clusters.get(key)
        if cluster is None:
            cluster = self._clusters[key] = model.Cluster(
                name=names.outbound_cluster(svc.host, port.port),
                protocol=model.Protocol.HTTP2 if grpc else port.protocol,
                endpoints=self.endpoints(svc, port),
                namespace=svc.namespace,
                service=svc.name,
                port=port.port,
            )
        return cluster

    def pod_cluster(self, pod: PodInfo, port: int, protocol: model.Protocol) -> model.Cluster:
        endpoint = model.Endpoint(
            address=pod.addresses[0],
            port=port,
            hbone=self.in_mesh(pod.namespace, pod if pod.known else None),
            service_account=pod.service_account,
            pod=pod.name,
        )
        return model.Cluster(
            name=names.outbound_cluster(pod.host, port),
            protocol=protocol,
            endpoints=(endpoint,),
            namespace=pod.namespace,
            service=pod.name,
            port=port,
        )

    def workload_ports(self, pod: PodInfo) -> dict[int, model.Protocol]:
        """A Pod's TCP ports (from slices that list it and its containerPorts), with protocol."""
        votes: dict[int, set[model.Protocol]] = {}
        for info in self._slices_of_pod.get(_pod_key(pod), []):
            for sp in info.ports:
                if sp.port is not None:
                    votes.setdefault(sp.port, set()).add(detect_protocol(sp.name, sp.app_protocol))
        for name, number in pod.container_ports:
            votes.setdefault(number, set()).add(detect_protocol(name, None))
        return {number: _strongest(found) for number, found in sorted(votes.items())}


def _pod_key(pod: PodInfo) -> tuple[str, str]:
    return (pod.namespace, pod.name)


def _label_index(
    pods: Mapping[tuple[str, str], PodInfo],
) -> dict[tuple[str, str, str], list[PodInfo]]:
    """Known Pods by (namespace, label key, label value), in Pod order."""
    found: dict[tuple[str, str, str], list[PodInfo]] = {}
    for pod in pods.values():
        if pod.known:
            for key, value in pod.labels.items():
                found.setdefault((pod.namespace, key, value), []).append(pod)
    return found


def _strongest(found: set[model.Protocol]) -> model.Protocol:
    for protocol in (model.Protocol.HTTP2, model.Protocol.HTTP):
        if protocol in found:
            return protocol
    return model.Protocol.TCP


def _endpoint_key(ep: model.Endpoint) -> tuple[str, int, str]:
    return (ep.address, ep.port, ep.pod or "")


def _slice_port(info: SliceInfo, port: ServicePort) -> int | None:
    for sp in info.ports:
        if sp.name == port.name:
            return sp.port
    if isinstance(port.target, int):
        return port.target
    if port.target is None:
        return port.port
    return None  # a named targetPort only the slice could resolve


# --- parsing ----------------------------------------------------------------------------


def _service(obj: index.Obj) -> ServiceInfo:
    spec = fields.mapping(obj.field("spec"), "spec")
    type_ = fields.opt_string(spec.get("type"), "spec.type") or "ClusterIP"
    raw_ips = fields.seq(spec.get("clusterIPs"), "spec.clusterIPs")
    if not raw_ips and spec.get("clusterIP") is not None:
        raw_ips = [spec.get("clusterIP")]
    texts = [fields.string(ip, f"spec.clusterIPs[{i}]") for i, ip in enumerate(raw_ips)]
    headless = any(text in ("None", "") for text in texts)
    addresses = tuple(
        normalize_ip(text, f"spec.clusterIPs[{i}]")
        for i, text in enumerate(texts)
        if text not in ("None", "")
    )
    ports = []
    for i, raw in enumerate(fields.seq(spec.get("ports"), "spec.ports")):
        parsed = _service_port(raw, f"spec.ports[{i}]")
        if parsed is not None:
            ports.append(parsed)
    selector = spec.get("selector")
    return ServiceInfo(
        obj=obj,
        type=type_,
        addresses=addresses,
        headless=headless,
        ports=tuple(ports),
        selector=fields.string_map(selector, "spec.selector") if selector is not None else None,
    )


def _service_port(raw: Any, path: str) -> ServicePort | None:
    item = fields.mapping(raw, path, required=True)
    protocol = fields.opt_string(item.get("protocol"), f"{path}.protocol") or "TCP"
    number = fields.port(item.get("port"), f"{path}.port")
    name = fields.opt_string(item.get("name"), f"{path}.name") or ""
    target = item.get("targetPort")
    if target is not None and not isinstance(target, str):
        target = fields.port(target, f"{path}.targetPort")
    app = fields.opt_string(item.get("appProtocol"), f"{path}.appProtocol")
    if protocol != "TCP":  # UDP and SCTP never reach a waypoint
        return None
    return ServicePort(name, number, target, detect_protocol(name, app))


def _slice(obj: index.Obj) -> SliceInfo | None:
    service = obj.labels.get(index.SERVICE_NAME_LABEL)
    address_type = fields.string(obj.field("addressType"), "addressType")
    if service is None or address_type not in ("IPv4", "IPv6"):
        return None  # FQDN slices and slices of no Service: nothing a waypoint dials
    ports = []
    for i, raw in enumerate(fields.seq(obj.field("ports"), "ports")):
        item = fields.mapping(raw, f"ports[{i}]", required=True)
        if (fields.opt_string(item.get("protocol"), f"ports[{i}].protocol") or "TCP") != "TCP":
            continue
        ports.append(
            SlicePort(
                name=fields.opt_string(item.get("name"), f"ports[{i}].name") or "",
                port=fields.opt_integer(item.get("port"), f"ports[{i}].port", 1, 65535),
                app_protocol=fields.opt_string(item.get("appProtocol"), f"ports[{i}].appProtocol"),
            )
        )
    endpoints = []
    for i, raw in enumerate(fields.seq(obj.field("endpoints"), "endpoints")):
        endpoint = _slice_endpoint(raw, f"endpoints[{i}]", obj.namespace)
        if endpoint is not None:
            endpoints.append(endpoint)
    return SliceInfo(obj, service, tuple(ports), tuple(endpoints))


def _slice_endpoint(raw: Any, path: str, namespace: str) -> SliceEndpoint | None:
    item = fields.mapping(raw, path, required=True)
    addresses = fields.seq(item.get("addresses"), f"{path}.addresses", required=True)
    if not addresses:
        raise fields.Bad(f"{path}.addresses must not be empty")
    # The EndpointSlice API: consumers use the first address only.
    address = normalize_ip(
        fields.string(addresses[0], f"{path}.addresses[0]"), f"{path}.addresses[0]"
    )
    conditions = fields.mapping(item.get("conditions"), f"{path}.conditions")
    ready = conditions.get("ready")
    if ready is not None and not isinstance(ready, bool):
        raise fields.Bad(f"{path}.conditions.ready must be true or false, not {ready!r}")
    if ready is False:
        return None
    target = fields.mapping(item.get("targetRef"), f"{path}.targetRef")
    pod = None
    if target and target.get("kind") == "Pod":
        name = fields.nonempty(target.get("name"), f"{path}.targetRef.name")
        pod_ns = fields.opt_string(target.get("namespace"), f"{path}.targetRef.namespace")
        pod = (pod_ns or namespace, name)
    return SliceEndpoint(address, pod)


def _pod(obj: index.Obj) -> PodInfo:
    spec = fields.mapping(obj.field("spec"), "spec")
    pod_status = fields.mapping(obj.field("status"), "status")
    account = fields.opt_string(spec.get("serviceAccountName"), "spec.serviceAccountName")
    addresses: list[str] = []
    for i, raw in enumerate(fields.seq(pod_status.get("podIPs"), "status.podIPs")):
        item = fields.mapping(raw, f"status.podIPs[{i}]", required=True)
        addresses.append(
            normalize_ip(
                fields.string(item.get("ip"), f"status.podIPs[{i}].ip"), f"status.podIPs[{i}].ip"
            )
        )
    primary = fields.opt_string(pod_status.get("podIP"), "status.podIP")
    if primary:
        first = normalize_ip(primary, "status.podIP")
        addresses = [first, *[a for a in addresses if a != first]]
    phase = pod_status.get("phase")
    if phase in ("Succeeded", "Failed"):
        addresses = []
    ports = _container_ports(spec)
    return PodInfo(
        namespace=obj.namespace,
        name=obj.name,
        labels=obj.labels,
        service_account=account or "default",
        addresses=tuple(addresses),
        container_ports=ports,
        known=True,
        ref=obj.ref,
    )


def _container_ports(spec: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """The (name, number) of every TCP containerPort, sorted by number."""
    ports: set[tuple[str, int]] = set()
    for c, container in enumerate(fields.seq(spec.get("containers"), "spec.containers")):
        path = f"spec.containers[{c}]"
        item = fields.mapping(container, path, required=True)
        for p, raw in enumerate(fields.seq(item.get("ports"), f"{path}.ports")):
            where = f"{path}.ports[{p}]"
            port = fields.mapping(raw, where, required=True)
            if (fields.opt_string(port.get("protocol"), f"{where}.protocol") or "TCP") != "TCP":
                continue
            name = fields.opt_string(port.get("name"), f"{where}.name") or ""
            ports.add((name, fields.port(port.get("containerPort"), f"{where}.containerPort")))
    return tuple(sorted(ports, key=lambda item: (item[1], item[0])))

"""Which backends a world needs: one per endpoint address of its EndpointSlices.

Pure. A cluster would run a pod behind each endpoint address; locally we run one echo backend
per address instead. Each backend serves every port its slices name, with the protocol the
waypoint itself infers for that port (``waypoint.translate.services.detect_protocol``, so the
backend speaks what Envoy will send), and knows whether it is in the mesh (ambient), which
decides whether it also gets an HBONE terminator with its pod's SPIFFE identity.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from waypoint import model, wellknown
from waypoint.translate import services

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
AMBIENT = "ambient"
DEFAULT_SERVICE_ACCOUNT = "default"
# A port one Service calls gRPC and another HTTP is served as the most capable of the two.
_RANK = {model.Protocol.TCP: 0, model.Protocol.HTTP: 1, model.Protocol.HTTP2: 2}


class WorldError(ValueError):
    """An object of the world cannot be turned into a local backend."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """One endpoint address: the pod that would run there and the ports it serves."""

    address: str
    namespace: str
    name: str
    service_account: str
    mesh: bool
    ports: tuple[tuple[int, model.Protocol], ...]
    version: str = "v1"

    def ports_of(self, protocol: model.Protocol) -> tuple[int, ...]:
        return tuple(port for port, proto in self.ports if proto is protocol)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    labels = _meta(obj).get("labels") if obj else None
    return labels if isinstance(labels, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = _meta(obj)
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _where(obj: Mapping[str, Any]) -> str:
    namespace, name = _key(obj)
    return f"{obj.get('kind')} {namespace}/{name}"


def _by_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> dict[tuple[str, str], Any]:
    return {_key(o): o for o in objects if o.get("kind") == kind}


def _app_protocols(service: Mapping[str, Any] | None) -> dict[str, str]:
    """Service port name → appProtocol, for slice ports that do not carry their own."""
    spec = service.get("spec") if service else None
    ports = spec.get("ports") if isinstance(spec, Mapping) else None
    out: dict[str, str] = {}
    for port in ports if isinstance(ports, list) else []:
        if isinstance(port, Mapping) and port.get("appProtocol"):
            out[str(port.get("name") or "")] = str(port["appProtocol"])
    return out


def _slice_ports(
    slice_: Mapping[str, Any], service: Mapping[str, Any] | None
) -> list[tuple[int, model.Protocol]]:
    app_protocols = _app_protocols(service)
    out = []
    raw_ports = slice_.get("ports") or []
    if not isinstance(raw_ports, list):
        raise WorldError(f"{_where(slice_)}: ports must be a list")
    for index, port in enumerate(raw_ports):
        if not isinstance(port, Mapping):
            raise WorldError(f"{_where(slice_)}: ports[{index}] must be a mapping")
        if str(port.get("protocol") or "TCP") != "TCP" or port.get("port") is None:
            continue  # UDP/SCTP never reach a waypoint; a port-less slice means "all ports"
        number = port["port"]
        if not isinstance(number, int) or not 0 < number < 65536:
            raise WorldError(f"{_where(slice_)}: ports[{index}].port {number!r} is not a port")
        name = str(port.get("name") or "")
        app = port.get("appProtocol") or app_protocols.get(name)
        out.append((number, services.detect_protocol(name, str(app) if app else None)))
    return out


def _address(text: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(text)))
    except ValueError:
        raise WorldError(f"{where}: {text!r} is not an IP address") from None


def _in_mesh(pod: Mapping[str, Any] | None, namespace: Mapping[str, Any] | None) -> bool:
    """Istio's rule: a pod label (ambient or none) wins over its namespace's label."""
    mode = _labels(pod).get(wellknown.DATAPLANE_MODE_LABEL)
    if mode in (AMBIENT, "none"):
        return mode == AMBIENT
    return _labels(namespace).get(wellknown.DATAPLANE_MODE_LABEL) == AMBIENT


def _service_account(pod: Mapping[str, Any] | None) -> str:
    spec = pod.get("spec") if pod else None
    account = spec.get("serviceAccountName") if isinstance(spec, Mapping) else None
    return str(account or DEFAULT_SERVICE_ACCOUNT)


def _pod_ref(endpoint: Mapping[str, Any], namespace: str) -> tuple[str, str] | None:
    ref = endpoint.get("targetRef")
    if not isinstance(ref, Mapping) or ref.get("kind") != "Pod" or not ref.get("name"):
        return None
    return str(ref.get("namespace") or namespace), str(ref["name"])


def address_name(address: str) -> str:
    """The name of a backend known only by its address: ``ep-127-0-10-1``."""
    return "ep-" + address.replace(".", "-").replace(":", "-").strip("-")


@dataclasses.dataclass
class _Builder:
    address: str
    namespace: str
    name: str
    service_account: str
    mesh: bool
    version: str
    ports: dict[int, model.Protocol] = dataclasses.field(default_factory=dict)

    def add(self, ports: Iterable[tuple[int, model.Protocol]]) -> None:
        for port, proto in ports:
            known = self.ports.get(port)
            if known is None or _RANK[proto] > _RANK[known]:
                self.ports[port] = proto

    def build(self) -> Workload:
        return Workload(
            self.address,
            self.namespace,
            self.name,
            self.service_account,
            self.mesh,
            tuple(sorted(self.ports.items())),
            self.version,
        )


def plan(objects: Sequence[Mapping[str, Any]]) -> tuple[Workload, ...]:
    """Every endpoint address of the world's EndpointSlices as a workload, sorted by address."""
    pods = _by_kind(objects, "Pod")
    namespaces = {name: ns for (_, name), ns in _by_kind(objects, "Namespace").items()}
    svcs = _by_kind(objects, "Service")
    found: dict[str, _Builder] = {}
    for slice_ in (o for o in objects if o.get("kind") == "EndpointSlice"):
        namespace, _ = _key(slice_)
        service = svcs.get((namespace, str(_labels(slice_).get(SERVICE_NAME_LABEL, ""))))
        ports = _slice_ports(slice_, service)
        for index, endpoint in enumerate(slice_.get("endpoints") or []):
            if not isinstance(endpoint, Mapping):
                raise WorldError(f"{_where(slice_)}: endpoints[{index}] must be a mapping")
            for raw in endpoint.get("addresses") or []:
                address = _address(raw, _where(slice_))
                builder = found.get(address) or _new(address, endpoint, namespace, pods, namespaces)
                found[address] = builder
                builder.add(ports)
    return tuple(found[address].build() for address in sorted(found))


def _new(
    address: str,
    endpoint: Mapping[str, Any],
    namespace: str,
    pods: Mapping[tuple[str, str], Mapping[str, Any]],
    namespaces: Mapping[str, Mapping[str, Any]],
) -> _Builder:
    ref = _pod_ref(endpoint, namespace)
    pod = pods.get(ref) if ref else None
    pod_ns, name = ref if ref else (namespace, address_name(address))
    return _Builder(
        address=address,
        namespace=pod_ns,
        name=name,
        service_account=_service_account(pod),
        mesh=_in_mesh(pod, namespaces.get(pod_ns)),
        version=str(_labels(pod).get("version") or "v1"),
    )

"""Turn the GAMMA conformance manifests into a world a local waypoint can serve.

Upstream runs the manifests on a cluster, where the scheduler makes pods, kube-proxy assigns
ClusterIPs and the EndpointSlice controller fills endpoints. Here we do those three jobs
deterministically: each Deployment gets one Pod on its own loopback IP, each Service a ClusterIP,
and each Service an EndpointSlice of the Pods its selector picks. Namespaces join the mesh and
use one waypoint, as an ambient user would set them up.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

MESH_NS = "gateway-conformance-mesh"
WAYPOINT = "waypoint"
POD_NET = ipaddress.IPv4Address("127.0.20.1")
VIP_NET = ipaddress.IPv4Address("10.96.20.1")
SERVICE_ACCOUNT = "default"


@dataclasses.dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    deployment: str
    ip: str
    labels: Mapping[str, str]
    ports: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class World:
    objects: tuple[dict[str, Any], ...]
    pods: tuple[PodInfo, ...]
    vips: Mapping[tuple[str, str], str]  # (namespace, service) -> ClusterIP

    def vip(self, namespace: str, service: str) -> str:
        return self.vips[(namespace, service)]

    def first_pod(self, namespace: str, selector: Mapping[str, str]) -> PodInfo:
        for pod in self.pods:
            if pod.namespace == namespace and _selects(selector, pod.labels):
                return pod
        raise LookupError(f"no pod in {namespace} matches {dict(selector)}")


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return (str(obj.get("kind")), str(meta.get("namespace", "")), str(meta.get("name")))


def _pod_name(deployment: str, namespace: str) -> str:
    digest = hashlib.sha256(f"{namespace}/{deployment}".encode()).hexdigest()
    return f"{deployment}-{digest[:9]}-{digest[9:14]}"


def _waypoint_gateway() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": WAYPOINT, "namespace": MESH_NS},
        "spec": {
            "gatewayClassName": "waypoint",
            "listeners": [
                {
                    "name": "mesh",
                    "port": 15008,
                    "protocol": "HBONE",
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }
            ],
        },
    }


def _enroll(namespace: dict[str, Any]) -> dict[str, Any]:
    labels = namespace.setdefault("metadata", {}).setdefault("labels", {})
    labels["istio.io/dataplane-mode"] = "ambient"
    labels["istio.io/use-waypoint"] = WAYPOINT
    labels["istio.io/use-waypoint-namespace"] = MESH_NS
    return namespace


def _pods(
    deployments: Sequence[Mapping[str, Any]], pod_net: ipaddress.IPv4Address
) -> list[PodInfo]:
    pods = []
    for index, dep in enumerate(sorted(deployments, key=_key)):
        _, namespace, name = _key(dep)
        template = dep["spec"]["template"]
        ports = tuple(
            int(p["containerPort"])
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        )
        pods.append(
            PodInfo(
                namespace=namespace,
                name=_pod_name(name, namespace),
                deployment=name,
                ip=str(pod_net + index),
                labels=dict(template["metadata"].get("labels", {})),
                ports=ports,
            )
        )
    return pods


def _pod_object(pod: PodInfo) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": dict(pod.labels)},
        "spec": {"serviceAccountName": SERVICE_ACCOUNT, "containers": [{"name": "echo"}]},
        "status": {"podIP": pod.ip, "phase": "Running"},
    }


def _slice(service: Mapping[str, Any], pods: Sequence[PodInfo]) -> dict[str, Any]:
    _, namespace, name = _key(service)
    selector = service["spec"].get("selector") or {}
    ports = [
        {"name": p.get("name", ""), "port": int(p.get("targetPort", p["port"])), "protocol": "TCP"}
        for p in service["spec"]["ports"]
    ]
    endpoints = [
        {
            "addresses": [pod.ip],
            "conditions": {"ready": True},
            "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name},
        }
        for pod in pods
        if pod.namespace == namespace and _selects(selector, pod.labels)
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-slice",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }


def build(objects: Sequence[Mapping[str, Any]], pod_net: ipaddress.IPv4Address = POD_NET) -> World:
    """Complete the manifests into a served world: pods, VIPs, slices, waypoint, enrollment.

    ``pod_net`` is the first pod address; test modules that run their own stack in the same
    session as the conformance replay pick another, since pods listen on fixed ports.
    """
    objs = [copy.deepcopy(dict(o)) for o in objects]
    deployments = [o for o in objs if o.get("kind") == "Deployment"]
    services = sorted((o for o in objs if o.get("kind") == "Service"), key=_key)
    pods = _pods(deployments, pod_net)
    vips: dict[tuple[str, str], str] = {}
    for index, svc in enumerate(services):
        _, namespace, name = _key(svc)
        vips[(namespace, name)] = str(VIP_NET + index)
        svc["spec"]["clusterIP"] = vips[(namespace, name)]
    out = [_enroll(o) if o.get("kind") == "Namespace" else o for o in objs]
    out += [_pod_object(p) for p in pods]
    out += [_slice(s, pods) for s in services]
    out.append(_waypoint_gateway())
    return World(objects=tuple(out), pods=tuple(pods), vips=vips)

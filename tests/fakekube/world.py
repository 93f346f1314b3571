"""A small mesh for controller and CLI tests: a namespace, a waypoint, a bound Service, its
endpoints and an HTTPRoute, plus helpers to connect the real client to a ``FakeKube``."""

from __future__ import annotations

import pathlib
from typing import Any

from tests.fakekube import server
from waypoint.controller import apiclient

Obj = dict[str, Any]
GW_API = "gateway.networking.k8s.io/v1"


def namespace(name: str, labels: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def gateway_class() -> Obj:
    return {
        "apiVersion": GW_API,
        "kind": "GatewayClass",
        "metadata": {"name": "waypoint"},
        "spec": {"controllerName": "waypoint.dev/controller"},
    }


def service(ns: str, name: str, ip: str, waypoint: str | None = "waypoint") -> Obj:
    labels = {"istio.io/use-waypoint": waypoint} if waypoint else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "clusterIP": ip,
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def endpoint_slice(ns: str, service_name: str, address: str) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-1",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def http_route(ns: str, name: str, service_name: str) -> Obj:
    return {
        "apiVersion": GW_API,
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": service_name, "port": 80}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": service_name, "port": 80}],
                }
            ],
        },
    }


def mesh(ns: str = "demo") -> list[Obj]:
    """Everything but the waypoint Gateway itself (tests create that, as a user would)."""
    return [
        namespace(ns),
        service(ns, "echo", "10.96.1.10"),
        endpoint_slice(ns, "echo", "10.0.0.5"),
        http_route(ns, "echo-route", "echo"),
    ]


def connect(fake: server.FakeKube, tmp_path: pathlib.Path) -> apiclient.Cluster:
    return apiclient.Cluster.connect(str(fake.write_kubeconfig(tmp_path / "kubeconfig")))


def mark_ready(fake: server.FakeKube, ns: str, name: str, replicas: int = 1) -> None:
    """Play the kubelet and the Deployment controller: the waypoint's pods are ready."""
    fake.set_status(
        "apps/v1",
        "Deployment",
        ns,
        name,
        {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas},
    )

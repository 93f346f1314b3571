"""Trimming objects at the informer boundary: the cache keeps only what the controller reads.

Pods are the most numerous objects in a cluster and the largest (managed fields, container
specs, volumes, conditions). Translation reads a Pod's namespace, name, labels, service
account, IPs, phase and TCP container ports (to tell which ports a workload speaks), so those
are all the controller keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]


def pod(obj: Mapping[str, Any]) -> Obj:
    """``obj`` (a Pod) with only the fields translation reads."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    state = obj.get("status") or {}
    kept_meta = {
        key: meta[key] for key in ("name", "namespace", "labels", "resourceVersion") if key in meta
    }
    kept_spec: Obj = {}
    if spec.get("serviceAccountName"):
        kept_spec["serviceAccountName"] = spec["serviceAccountName"]
    containers = [
        {
            "ports": [
                _port(port) for port in container.get("ports") or [] if isinstance(port, Mapping)
            ]
        }
        for container in spec.get("containers") or []
        if isinstance(container, Mapping) and container.get("ports")
    ]
    if containers:
        kept_spec["containers"] = containers
    kept_status = {key: state[key] for key in ("phase", "podIP", "podIPs") if key in state}
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": obj.get("kind", "Pod"),
        "metadata": kept_meta,
        "spec": kept_spec,
        "status": kept_status,
    }


def _port(port: Mapping[str, Any]) -> Obj:
    return {key: port[key] for key in ("name", "containerPort", "protocol") if key in port}


def reference(obj: Mapping[str, Any]) -> Obj:
    """Only the object's identity and resourceVersion: enough to notice that it changed."""
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion", ""),
        "kind": obj.get("kind", ""),
        "metadata": {
            key: meta[key] for key in ("name", "namespace", "resourceVersion") if key in meta
        },
    }

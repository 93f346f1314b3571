"""Translation and resource building do work linear in the size of the world.

Not a timed test: it counts the Python-level work (calls into project code, and builtin calls
made from it) of translating a world and building its Envoy resources at N and 4N Services,
and requires the ratio to stay near 4. A per-Service scan over all Services, Pods, slices or
policies shows up as a ratio near 16 for that part. The counts are exact and repeatable;
dunder methods are left out because how often a sort or a hash collision calls ``__lt__`` or
``__eq__`` depends on hash randomization.

The world is shaped like a real mesh rather than the minimum: every Service has a selector,
a Pod and an EndpointSlice pointing at it, an HTTPRoute and a TrafficPolicy; every namespace
of 10 Services has its own waypoint taking both Service and workload traffic, with an
ExtAuthzPolicy on it.
"""

from __future__ import annotations

import collections
import gc
import pathlib
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import pytest

from waypoint import pipeline
from waypoint.envoy import options as envoy_options
from waypoint.envoy import resources

PER_NAMESPACE = 10
SMALL = 40
PROJECT = str(pathlib.Path(pipeline.__file__).parent)


def _namespace(ns: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "labels": {
                    "istio.io/use-waypoint": "waypoint",
                    "istio.io/dataplane-mode": "ambient",
                },
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {
                "name": "waypoint",
                "namespace": ns,
                "labels": {"istio.io/waypoint-for": "all"},
            },
            "spec": {
                "gatewayClassName": "waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        },
        {
            "apiVersion": "policy.waypoint.dev/v1alpha1",
            "kind": "ExtAuthzPolicy",
            "metadata": {"name": "everywhere", "namespace": ns},
            "spec": {
                "targetRefs": [
                    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
                ],
                "decision": "envoy/authz/allow",
            },
        },
    ]


def _service(ns: str, name: str, index: int) -> list[dict[str, Any]]:
    ip = f"10.1.{index // 250}.{index % 250 + 1}"
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "clusterIP": f"10.97.{index // 250}.{index % 250 + 1}",
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-0", "namespace": ns, "labels": {"app": name}},
            "spec": {
                "serviceAccountName": name,
                "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
            },
            "status": {"podIP": ip, "phase": "Running"},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-1",
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": f"{name}-0", "namespace": ns},
                }
            ],
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": name, "port": 80}],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": f"/api/{index}"}}],
                        "backendRefs": [{"name": name, "port": 80}],
                    },
                    {"backendRefs": [{"name": name, "port": 80}]},
                ],
            },
        },
        {
            "apiVersion": "policy.waypoint.dev/v1alpha1",
            "kind": "TrafficPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "targetRefs": [{"group": "", "kind": "Service", "name": name}],
                "timeout": {"request": "2s"},
            },
        },
    ]


def world(services: int) -> list[dict[str, Any]]:
    """``services`` Services in namespaces of PER_NAMESPACE, each namespace with a waypoint."""
    objects: list[dict[str, Any]] = []
    for index in range(services):
        ns = f"team-{index // PER_NAMESPACE:04d}"
        if index % PER_NAMESPACE == 0:
            objects += _namespace(ns)
        objects += _service(ns, f"svc-{index:05d}", index)
    return objects


def _build(objects: list[dict[str, Any]]) -> int:
    """Translate and build every waypoint; the number of resources built."""
    translation = pipeline.translate_objects(objects)
    opts = envoy_options.BootstrapOptions(cert_dir="/certs")
    built = [resources.build(waypoint, opts) for waypoint in translation.waypoints]
    return sum(len(r.listeners) + len(r.clusters) for r in built)


def _ours(frame: types.FrameType) -> bool:
    code = frame.f_code
    name = code.co_name
    return code.co_filename.startswith(PROJECT) and not (
        name.startswith("__") and name.endswith("__")
    )


def _count(work: Callable[[], object]) -> collections.Counter[str]:
    """Calls into project code, and builtin calls made from it, by function."""
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call") and _ours(frame):
            where = f"{frame.f_code.co_filename}:{frame.f_code.co_name}"
            counts[where if event == "call" else f"{where} -> {getattr(arg, '__name__', '?')}"] += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return counts


@pytest.fixture(scope="module")
def counts() -> tuple[collections.Counter[str], collections.Counter[str]]:
    small, large = world(SMALL), world(4 * SMALL)
    return _count(lambda: _build(small)), _count(lambda: _build(large))


def test_world_is_served_in_full() -> None:
    translation = pipeline.translate_objects(world(2 * PER_NAMESPACE))
    assert len(translation.waypoints) == 2
    for waypoint in translation.waypoints:
        services = [d for d in waypoint.destinations if d.kind.value == "service"]
        workloads = [d for d in waypoint.destinations if d.kind.value != "service"]
        assert len(services) == len(workloads) == PER_NAMESPACE
        assert all(len(d.routes) == 2 and d.policy is None for d in services)
        assert all(r.policy is not None and r.policy.authz for d in services for r in d.routes)
        assert all(r.timeouts is not None for d in services for r in d.routes)


def test_total_work_is_linear(
    counts: tuple[collections.Counter[str], collections.Counter[str]],
) -> None:
    small, large = counts
    ratio = sum(large.values()) / sum(small.values())
    # Exactly linear work gives just under 4 (a few calls are per translation, not per object).
    assert 3.8 < ratio <= 4.1, ratio


def test_no_function_grows_faster_than_the_world(
    counts: tuple[collections.Counter[str], collections.Counter[str]],
) -> None:
    small, large = counts
    # Below a few hundred calls, a constant term (one per waypoint type, say) is noise.
    grown = {
        where: (small[where], n) for where, n in large.items() if n > 400 and n > 4.5 * small[where]
    }
    assert not grown, grown


def main(sizes: list[int]) -> None:
    """Print translate and build times for this world (thread CPU time, best of 3)."""
    opts = envoy_options.BootstrapOptions(cert_dir="/certs")
    print(f"{'services':>8} {'waypoints':>9} {'translate':>10} {'resources':>10}")
    for size in sizes:
        objects, best = world(size), [float("inf"), float("inf")]
        for _ in range(3):
            gc.collect()
            start = time.thread_time()
            translation = pipeline.translate_objects(objects)
            translated = time.thread_time()
            for waypoint in translation.waypoints:
                resources.build(waypoint, opts)
            built = time.thread_time()
            best = [min(best[0], translated - start), min(best[1], built - translated)]
        print(
            f"{size:>8} {len(translation.waypoints):>9} "
            f"{best[0] * 1000:>8.0f}ms {best[1] * 1000:>8.0f}ms"
        )


if __name__ == "__main__":
    main([int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "500,1000,2000,5000").split(",")])

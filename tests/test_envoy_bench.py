"""Benchmark: build and serialize the resources of a waypoint with 1,000 destinations.

Disabled by default (``--benchmark-disable`` in pytest's addopts runs the body once as a
plain test); ``pytest tests/test_envoy_bench.py --benchmark-enable`` measures it.
"""

from __future__ import annotations

import pytest
import pytest_benchmark.fixture

from waypoint import model, names
from waypoint.envoy import options, resources

SIZE = 1000


def _waypoint(size: int) -> model.Waypoint:
    destinations = []
    clusters = []
    for index in range(size):
        ref = names.HostRef("svc", "ns1", f"svc-{index:04d}")
        cluster = names.outbound_cluster(ref, 80)
        route = model.Route(
            names.route_name("HTTPRoute", "ns1", f"route-{index:04d}", 0, 0),
            model.RouteMatch(path=model.PathMatch(model.MatchType.PREFIX, f"/api/{index}")),
            (model.WeightedBackend(cluster),),
            request_headers=model.HeaderModifier(set=(model.Header("x-route", str(index)),)),
        )
        destinations.append(
            model.Destination(
                model.DestinationKind.SERVICE,
                "ns1",
                ref.name,
                80,
                (f"10.96.{index // 256}.{index % 256}",),
                model.Protocol.HTTP,
                cluster,
                (route,),
            )
        )
        endpoints = tuple(
            model.Endpoint(f"10.1.{index // 256}.{index % 256}", 8080 + n, hbone=n == 0)
            for n in range(3)
        )
        clusters.append(model.Cluster(cluster, model.Protocol.HTTP, endpoints, "ns1", ref.name, 80))
    identity = model.WaypointIdentity("cluster.local", "ns1", "waypoint")
    return model.Waypoint(
        "ns1",
        "waypoint",
        model.TrafficType.SERVICE,
        identity,
        None,
        tuple(destinations),
        tuple(clusters),
    )


def _build_and_serialize(waypoint: model.Waypoint) -> int:
    built = resources.build(waypoint, options.BootstrapOptions())
    return sum(
        len(resource.SerializeToString(deterministic=True))
        for kind in (built.listeners, built.clusters, built.secrets)
        for resource in kind
    )


@pytest.mark.benchmark(group="envoy-resources")
def test_build_and_serialize_1000_destinations(
    benchmark: pytest_benchmark.fixture.BenchmarkFixture,
) -> None:
    waypoint = _waypoint(SIZE)
    size = benchmark(_build_and_serialize, waypoint)
    built = resources.build(waypoint, options.BootstrapOptions())
    # 1,000 internal listeners + HBONE in + HBONE out + readiness + stats.
    assert len(built.listeners) == SIZE + 4
    assert len(built.clusters) == 2 * SIZE + 2
    assert size > 0

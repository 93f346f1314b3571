"""Bound Services and workloads plus attached routes → one ``model.Waypoint`` each.

Route order within a destination port: consumer routes first, grouped by client namespace
(GEP-1294: clients in a namespace with consumer routes use those, not the producer's; the Envoy
side ends each group with a 404 for that namespace), then the producer routes. Within a group,
Gateway API precedence (see ``matches``). Clusters are every cluster a destination or
a route refers to, sorted by name; when a Service port is reached both as plain HTTP and from a
GRPCRoute, the cluster speaks HTTP/2.
"""

from __future__ import annotations

from collections.abc import Iterable

from waypoint import model
from waypoint.translate import binding, gateways, routes, services


class _Clusters:
    def __init__(self) -> None:
        self.by_name: dict[str, model.Cluster] = {}

    def add(self, cluster: model.Cluster) -> None:
        known = self.by_name.get(cluster.name)
        if known is None or (
            cluster.protocol is model.Protocol.HTTP2 and known.protocol is not model.Protocol.HTTP2
        ):
            self.by_name[cluster.name] = cluster

    def sorted(self) -> tuple[model.Cluster, ...]:
        return tuple(self.by_name[name] for name in sorted(self.by_name))


def _ordered_routes(attachments: Iterable[routes.Attachment]) -> tuple[model.Route, ...]:
    result: list[model.Route] = []
    seen: set[tuple[str | None, str]] = set()
    for a in sorted(attachments, key=lambda a: a.order):
        ident = (a.route.consumer_namespace, a.route.name)
        if ident not in seen:  # the same rule reached through two parentRefs
            seen.add(ident)
            result.append(a.route)
    return tuple(result)


class Shares:
    """Who each waypoint serves, grouped once for all waypoints: assembling one waypoint then
    reads only its own Services, Pods and routes, not the whole world (W × S otherwise)."""

    def __init__(
        self, world: services.World, bound: binding.Bindings, attached: routes.Attached
    ) -> None:
        self.services: dict[tuple[str, str], list[services.ServiceInfo]] = {}
        for key, svc in world.services.items():
            spec = bound.services.get(key)
            if spec is not None:
                self.services.setdefault(_key(spec), []).append(svc)
        self.pods: dict[tuple[str, str], list[services.PodInfo]] = {}
        for key, pod in world.pods.items():
            spec = bound.workloads.get(key)
            if spec is not None:
                self.pods.setdefault(_key(spec), []).append(pod)
        self.by_port: dict[tuple[str, str, int], list[routes.Attachment]] = {}
        for a in attached.attachments:
            self.by_port.setdefault((*a.service, a.port), []).append(a)
        self.route_clusters: dict[str, list[model.Cluster]] = {}
        for cluster in attached.clusters:
            self.route_clusters.setdefault(cluster.name, []).append(cluster)
        self.hostnames = attached.hostnames


def _key(spec: gateways.WaypointSpec) -> tuple[str, str]:
    return (spec.namespace, spec.name)


def _service_destinations(
    spec: gateways.WaypointSpec, world: services.World, shares: Shares, clusters: _Clusters
) -> list[model.Destination]:
    found = []
    for svc in shares.services.get(_key(spec), []):
        for port in svc.ports:
            default = world.service_cluster(svc, port)
            clusters.add(default)
            port_key = (svc.namespace, svc.name, port.port)
            routes_here = (
                _ordered_routes(shares.by_port.get(port_key, [])) if port.protocol.is_http else ()
            )
            found.append(
                model.Destination(
                    kind=model.DestinationKind.SERVICE,
                    namespace=svc.namespace,
                    name=svc.name,
                    port=port.port,
                    addresses=svc.addresses,
                    protocol=port.protocol,
                    default_cluster=default.name,
                    routes=routes_here,
                    hostnames=tuple(sorted(shares.hostnames.get(port_key, ())))
                    if routes_here
                    else (),
                )
            )
    return found


def _workload_destinations(
    spec: gateways.WaypointSpec, world: services.World, shares: Shares, clusters: _Clusters
) -> list[model.Destination]:
    found = []
    for pod in shares.pods.get(_key(spec), []):
        for number, protocol in world.workload_ports(pod).items():
            cluster = world.pod_cluster(pod, number, protocol)
            clusters.add(cluster)
            found.append(
                model.Destination(
                    kind=model.DestinationKind.WORKLOAD,
                    namespace=pod.namespace,
                    name=pod.name,
                    port=number,
                    addresses=pod.addresses,
                    protocol=protocol,
                    default_cluster=cluster.name,
                )
            )
    return found


def waypoint(
    spec: gateways.WaypointSpec,
    trust_domain: str,
    world: services.World,
    shares: Shares,
) -> model.Waypoint:
    clusters = _Clusters()
    destinations = _service_destinations(spec, world, shares, clusters)
    destinations += _workload_destinations(spec, world, shares, clusters)
    referenced = {
        name
        for d in destinations
        for r in d.routes
        for name in [*(b.cluster for b in r.backends if b.cluster), *(m.cluster for m in r.mirrors)]
    }
    for name in sorted(referenced):
        for cluster in shares.route_clusters.get(name, []):
            clusters.add(cluster)
    destinations.sort(key=lambda d: (d.kind.value, d.namespace, d.name, d.port))
    return model.Waypoint(
        namespace=spec.namespace,
        name=spec.name,
        traffic_type=spec.traffic_type,
        identity=model.WaypointIdentity(trust_domain, spec.namespace, spec.name),
        scope_service_account=spec.service_account,
        destinations=tuple(destinations),
        clusters=clusters.sorted(),
        proxy_port=spec.binding.proxy_port,
    )

"""Content-versioned snapshots of Envoy resources for one waypoint.

Every resource's version is a hash of its deterministic serialization, and a type's version is
a hash of its (name, version) pairs, so equal content always has equal versions: the server
compares versions instead of messages, an unchanged snapshot is never pushed again, and an
Envoy that reconnects to a restarted server holding the same content gets nothing to apply.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
from collections.abc import Iterable, Mapping
from typing import Protocol

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import any_pb2, message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# What is referenced goes before what references it: secrets and clusters (and their endpoints)
# exist before a listener or route points at them.
PUSH_ORDER: tuple[str, ...] = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
# Types whose old resources stay until every listener and route has moved off them.
REFERENCED_TYPES = frozenset({SECRET, CLUSTER, ENDPOINT})
# Types an Envoy subscribes to as a whole (no names) by default.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})

_VERSION_CHARS = 16


class SnapshotError(ValueError):
    """Resources that cannot form a snapshot (unnamed, duplicate names)."""


@dataclasses.dataclass(frozen=True)
class Resource:
    """One named resource, packed once, with its content version."""

    name: str
    version: str
    body: any_pb2.Any


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """All resources of one waypoint by type URL, then by name."""

    resources: Mapping[str, Mapping[str, Resource]]
    version: str
    # Clusters whose endpoints come over EDS: routes wait until those have arrived.
    eds_clusters: frozenset[str] = frozenset()

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    def type_version(self, type_url: str) -> str:
        return version_of(self.of_type(type_url))

    def count(self) -> int:
        return sum(len(by_name) for by_name in self.resources.values())


_EMPTY: Mapping[str, Resource] = types.MappingProxyType({})


class ResourceSet(Protocol):
    """What ``waypoint.envoy.resources.build`` returns (endpoints are optional)."""

    @property
    def listeners(self) -> tuple[message.Message, ...]: ...
    @property
    def clusters(self) -> tuple[message.Message, ...]: ...
    @property
    def routes(self) -> tuple[message.Message, ...]: ...
    @property
    def secrets(self) -> tuple[message.Message, ...]: ...


def pack(msg: message.Message) -> Resource:
    # A ClusterLoadAssignment is named by the cluster it serves.
    name = getattr(msg, "cluster_name", "") or getattr(msg, "name", "")
    if not name:
        raise SnapshotError(f"{msg.DESCRIPTOR.full_name} has no name")
    body = any_pb2.Any()
    body.Pack(msg, deterministic=True)
    digest = hashlib.sha256(body.type_url.encode() + b"\0" + body.value).hexdigest()
    return Resource(name=name, version=digest[:_VERSION_CHARS], body=body)


def version_of(resources: Mapping[str, Resource]) -> str:
    """The version of a set of resources: a hash of its sorted (name, version) pairs."""
    digest = hashlib.sha256()
    for name in sorted(resources):
        digest.update(f"{name}\0{resources[name].version}\n".encode())
    return digest.hexdigest()[:_VERSION_CHARS]


def build(messages: Iterable[message.Message]) -> Snapshot:
    """A snapshot of any mix of xds-protos messages, grouped by their type URL."""
    grouped: dict[str, dict[str, Resource]] = {}
    eds: set[str] = set()
    for msg in messages:
        resource = pack(msg)
        if _is_eds_cluster(msg):
            eds.add(resource.name)
        by_name = grouped.setdefault(resource.body.type_url, {})
        if resource.name in by_name:
            raise SnapshotError(f"duplicate {resource.body.type_url} named {resource.name!r}")
        by_name[resource.name] = resource
    frozen: dict[str, Mapping[str, Resource]] = {
        type_url: types.MappingProxyType(dict(sorted(by_name.items())))
        for type_url, by_name in sorted(grouped.items())
    }
    digest = hashlib.sha256()
    for type_url, of_type in frozen.items():
        digest.update(f"{type_url}\0{version_of(of_type)}\n".encode())
    return Snapshot(
        resources=types.MappingProxyType(frozen),
        version=digest.hexdigest()[:16],
        eds_clusters=frozenset(eds),
    )


def _is_eds_cluster(msg: message.Message) -> bool:
    is_cluster: bool = msg.DESCRIPTOR.full_name == "envoy.config.cluster.v3.Cluster"
    return is_cluster and bool(msg.type == cluster_pb2.Cluster.EDS)


def from_resources(resources: ResourceSet) -> Snapshot:
    """The snapshot of a ``waypoint.envoy.resources.Resources`` (plus ``endpoints`` if any)."""
    endpoints: tuple[message.Message, ...] = getattr(resources, "endpoints", ())
    return build(
        (
            *resources.secrets,
            *resources.clusters,
            *endpoints,
            *resources.listeners,
            *resources.routes,
        )
    )


EMPTY = build(())

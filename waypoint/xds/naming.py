"""Which waypoint an Envoy serves, read from its xDS node, with the inverse for bootstraps.

An Envoy's ``node.cluster`` is ``<namespace>/<name>`` of its waypoint Gateway; that is the cache
key. Namespaces and Gateway names are DNS names and never contain ``/``, so the split is exact.
``node.id`` is ``waypoint~<namespace>~<name>`` with an optional ``~<instance>`` (a pod name) so
that several replicas of one waypoint are told apart in logs and metrics; when ``node.cluster``
is empty the key is read from ``node.id`` instead. These are the shapes ``waypoint render`` uses.
"""

from __future__ import annotations

import dataclasses

NODE_ID_PREFIX = "waypoint"


class NodeError(ValueError):
    """An Envoy node that does not name a waypoint."""


@dataclasses.dataclass(frozen=True, order=True)
class WaypointKey:
    """A waypoint Gateway: the unit resources are scoped to."""

    namespace: str
    name: str

    def __post_init__(self) -> None:
        for part in (self.namespace, self.name):
            if not part or "/" in part or "~" in part:
                raise NodeError(f"not a waypoint namespace/name: {self.namespace!r}/{self.name!r}")

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def node_cluster(key: WaypointKey) -> str:
    return str(key)


def parse_node_cluster(text: str) -> WaypointKey:
    namespace, sep, name = text.partition("/")
    if not sep:
        raise NodeError(f"node cluster must be <namespace>/<name>, got {text!r}")
    return WaypointKey(namespace, name)


def node_id(key: WaypointKey, instance: str = "") -> str:
    base = f"{NODE_ID_PREFIX}~{key.namespace}~{key.name}"
    return f"{base}~{instance}" if instance else base


def parse_node_id(text: str) -> tuple[WaypointKey, str]:
    """Return the waypoint and the instance ("" when absent) of a node id."""
    parts = text.split("~")
    if len(parts) not in (3, 4) or parts[0] != NODE_ID_PREFIX:
        raise NodeError(f"node id must be waypoint~<namespace>~<name>[~<instance>], got {text!r}")
    return WaypointKey(parts[1], parts[2]), parts[3] if len(parts) == 4 else ""


def key_of_node(cluster: str, node_id_text: str) -> WaypointKey:
    """The waypoint of an Envoy node: from ``node.cluster``, else from ``node.id``."""
    if cluster:
        return parse_node_cluster(cluster)
    return parse_node_id(node_id_text)[0]

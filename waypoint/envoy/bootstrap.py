"""The static bootstrap: every resource of ``resources.build`` in one ``envoy -c`` file.

Certificates come from the two SDS files of ``waypoint.envoy.secrets`` (write them with
``waypoint.runtime.sds.write_files`` beside the bootstrap); everything else is inline.
"""

from __future__ import annotations

from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.bootstrap.internal_listener.v3 import internal_listener_pb2
from google.protobuf import message  # type: ignore[import-untyped,unused-ignore]

from waypoint import model
from waypoint.envoy import clusters, protos, resources
from waypoint.envoy import options as options_mod

INTERNAL_LISTENER = "envoy.bootstrap.internal_listener"


def node(waypoint: model.Waypoint, options: options_mod.BootstrapOptions) -> base_pb2.Node:
    """Envoy needs a node id and cluster for SDS; default to ``<name>.<namespace>``."""
    default = f"{waypoint.name}.{waypoint.namespace}"
    return base_pb2.Node(id=options.node_id or default, cluster=options.cluster or default)


def build(
    waypoint: model.Waypoint, options: options_mod.BootstrapOptions
) -> bootstrap_pb2.Bootstrap:
    built = resources.build(waypoint, options)
    return bootstrap_pb2.Bootstrap(
        node=node(waypoint, options),
        admin=bootstrap_pb2.Admin(
            address=clusters.socket_address(options.admin_address, options.admin_port)
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            listeners=built.listeners, clusters=built.clusters
        ),
        bootstrap_extensions=[
            protos.extension(INTERNAL_LISTENER, internal_listener_pb2.InternalListener())
        ],
    )


def to_dict(msg: message.Message) -> dict[str, Any]:
    """Plain data with proto field names and sorted keys (see ``protos.to_dict``)."""
    return protos.to_dict(msg)


# libyaml's emitter writes the same text as PyYAML's pure-Python one, 4x faster (17 vs 4 ms
# for the example waypoint's bootstrap); the controller renders one per waypoint.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def to_yaml(msg: message.Message) -> str:
    return dump(to_dict(msg))


def dump(data: Any) -> str:
    """``data`` as YAML, in the layout of every config this project writes."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=False, width=100)

"""Shared pieces of the xDS tests (no tests here): hand-made resources, traffic, Envoy setup.

The resources are small but real: a plain HTTP listener whose routes come over RDS and whose
backends are EDS clusters, so every xDS type the server handles is exercised by real Envoy.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (registers the type)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,  # noqa: F401 (registers the type)
)
from google.protobuf import json_format, message

from tests import conftest
from waypoint.envoy import options as envoy_options
from waypoint.runtime import envoy_process
from waypoint.xds import bootstrap, naming, snapshot

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ADS = {"ads": {}, "resource_api_version": "V3"}


def _parse(cls: type[message.Message], data: dict[str, Any]) -> message.Message:
    return json_format.ParseDict(data, cls())


def listener(name: str, port: int, route_config: str, stat_prefix: str = "http") -> message.Message:
    hcm = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "rds": {"route_config_name": route_config, "config_source": ADS},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return _parse(
        listener_pb2.Listener,
        {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ]
                }
            ],
        },
    )


def eds_cluster(name: str) -> message.Message:
    return _parse(
        cluster_pb2.Cluster,
        {
            "name": name,
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": ADS},
        },
    )


def endpoints(cluster: str, port: int) -> message.Message:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return _parse(
        endpoint_pb2.ClusterLoadAssignment,
        {
            "cluster_name": cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    )


def route_config(name: str, cluster: str) -> message.Message:
    return _parse(
        route_pb2.RouteConfiguration,
        {
            "name": name,
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                }
            ],
        },
    )


def direct_listener(name: str, port: int, body: str) -> message.Message:
    """A listener answering ``body`` itself, for tests that need no backend."""
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": body}},
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return _parse(
        listener_pb2.Listener,
        {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ]
                }
            ],
        },
    )


@dataclasses.dataclass
class World:
    """One waypoint's hand-made config: an HTTP listener routed to one of several backends."""

    listen_port: int
    backends: dict[str, int]

    def snapshot(self, target: str, *extra: message.Message) -> snapshot.Snapshot:
        """The listener routes everything to backend ``target``; only that cluster exists."""
        return snapshot.build(
            [
                eds_cluster(target),
                endpoints(target, self.backends[target]),
                listener("http", self.listen_port, "main"),
                route_config("main", target),
                *extra,
            ]
        )


def envoy_bootstrap(
    xds: str, key: naming.WaypointKey, admin_port: int, delta: bool
) -> dict[str, Any]:
    opts = envoy_options.BootstrapOptions(admin_port=admin_port)
    return bootstrap.build(xds, key.namespace, key.name, opts, delta=delta)


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Traffic:
    """Requests sent back to back from a thread; records who answered and every failure."""

    def __init__(self, port: int, who: Callable[[bytes], str]) -> None:
        self.port = port
        self.who = who
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.port)
                outcome = self.who(body) if status == 200 else f"status {status}: {body[:200]!r}"
                ok = status == 200
            except OSError as exc:
                outcome, ok = f"error: {exc}", False
            with self._lock:
                (self.answers if ok else self.failures).append(outcome)

    def last(self) -> str | None:
        with self._lock:
            return self.answers[-1] if self.answers else None

    def count(self, who: str) -> int:
        with self._lock:
            return self.answers.count(who)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def config_names(proc: envoy_process.EnvoyProcess) -> dict[str, set[str]]:
    """Names of the dynamic listeners, clusters and route configs an Envoy runs now."""
    dump = json.loads(proc.admin_get("/config_dump?include_eds"))
    names: dict[str, set[str]] = {
        "listeners": set(),
        "clusters": set(),
        "routes": set(),
        "endpoints": set(),
        "secrets": set(),
    }
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        if kind == "ListenersConfigDump":
            for item in config.get("dynamic_listeners", []):
                if "active_state" in item:
                    names["listeners"].add(item["name"])
        elif kind == "ClustersConfigDump":
            for item in config.get("dynamic_active_clusters", []):
                names["clusters"].add(item["cluster"]["name"])
        elif kind == "RoutesConfigDump":
            for item in config.get("dynamic_route_configs", []):
                names["routes"].add(item["route_config"]["name"])
        elif kind == "SecretsConfigDump":
            for item in config.get("dynamic_active_secrets", []):
                names["secrets"].add(item["name"])
        elif kind == "EndpointsConfigDump":
            for item in config.get("dynamic_endpoint_configs", []):
                names["endpoints"].add(item["endpoint_config"]["cluster_name"])
    return names


free_port = conftest.free_port

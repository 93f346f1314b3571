"""``waypoint controller --xds-listen``: the controller serves live config over ADS.

The fake API server, the controller with its ADS server, and a real Envoy started from the
bootstrap in the generated ConfigMap (only the xDS Service address is moved to loopback, as
cluster DNS would resolve it): Envoy receives the waypoint's listeners, an HTTPRoute change in
the API reaches it without a restart or a Kubernetes write, and a rejected push turns the
Gateway's Programmed condition False with Envoy's message.
"""

from __future__ import annotations

import json
import pathlib
import threading
from typing import Any

import kubernetes_validate
import pytest
import yaml
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests import conftest
from tests.fakekube import server, world
from waypoint import model, wellknown
from waypoint.controller import apiclient, manager
from waypoint.controller import xds as kxds
from waypoint.envoy import options as envoy_options
from waypoint.envoy import resources
from waypoint.kube import gateway
from waypoint.local import ca as dev_ca
from waypoint.runtime import envoy_process
from waypoint.xds import cache, naming, runner, snapshot

GW = ("gateway.networking.k8s.io/v1", "Gateway", "demo", "waypoint")
CONFIG_MAP = ("v1", "ConfigMap", "demo", "waypoint-envoy-config")
DEPLOYMENT = ("apps/v1", "Deployment", "demo", "waypoint")
MANAGED_BY, MANAGED = wellknown.MANAGED_BY_LABEL, wellknown.MANAGED_BY_VALUE
PATIENCE = 30.0  # a deadline for progress on a busy 2-core machine, not a speed check


class Breaker:
    """A snapshot builder that, on demand, adds a listener Envoy must reject (an HTTP
    connection manager without stat_prefix): a deliberately invalid push."""

    def __init__(self) -> None:
        self.broken = False

    def __call__(
        self, waypoint: model.Waypoint, options: envoy_options.BootstrapOptions
    ) -> snapshot.Snapshot:
        built = resources.build(waypoint, options)
        if self.broken:
            built = resources.Resources(
                listeners=(*built.listeners, _bad_listener()),
                clusters=built.clusters,
                routes=built.routes,
                secrets=built.secrets,
            )
        return snapshot.from_resources(built)


def _bad_listener() -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name="broken",
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address="127.0.0.1", port_value=conftest.free_port()
            )
        ),
    )
    manager_config = hcm_pb2.HttpConnectionManager(
        route_config=route_pb2.RouteConfiguration(name="broken")
    )
    chain = listener.filter_chains.add()
    network_filter = chain.filters.add(name="envoy.filters.network.http_connection_manager")
    network_filter.typed_config.Pack(manager_config)
    return listener


@pytest.fixture
def options(tmp_path: pathlib.Path) -> envoy_options.BootstrapOptions:
    cert_dir = tmp_path / "certs"
    authority = dev_ca.CertificateAuthority.create("cluster.local")
    authority.issue_workload("demo", "waypoint").write(cert_dir)
    return conftest.loopback_options(
        cert_dir=str(cert_dir),
        hbone_port=conftest.free_port(),
    )


def _to_loopback(bootstrap_yaml: str, port: int) -> dict[str, Any]:
    """The bootstrap with the xDS Service name replaced by the loopback ADS server."""
    boot: dict[str, Any] = yaml.safe_load(bootstrap_yaml)
    (xds_cluster,) = boot["static_resources"]["clusters"]
    xds_cluster["type"] = "STATIC"
    (endpoints,) = xds_cluster["load_assignment"]["endpoints"]
    endpoints["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] = {
        "address": "127.0.0.1",
        "port_value": port,
    }
    return boot


def _listeners(proc: envoy_process.EnvoyProcess) -> set[str]:
    dump = json.loads(proc.admin_get("/config_dump?resource=dynamic_listeners"))
    return {item["name"] for item in dump["configs"] if "active_state" in item}


def _routes_text(proc: envoy_process.EnvoyProcess) -> str:
    return proc.admin_get("/config_dump?resource=dynamic_listeners")


def _generated(fake: server.FakeKube) -> list[dict[str, Any]]:
    kinds = [("v1", "ServiceAccount"), ("v1", "ConfigMap"), ("v1", "Service")]
    kinds += [("apps/v1", "Deployment"), ("autoscaling/v2", "HorizontalPodAutoscaler")]
    found = [obj for api_version, kind in kinds for obj in fake.objects(api_version, kind)]
    return [o for o in found if (o["metadata"].get("labels") or {}).get(MANAGED_BY) == MANAGED]


def _acknowledged(snapshots: cache.SnapshotCache) -> bool:
    key = naming.WaypointKey("demo", "waypoint")
    good, current = snapshots.last_good(key), snapshots.get(key)
    return good is not None and current is not None and good.version == current.version


def _programmed(fake: server.FakeKube) -> dict[str, Any]:
    gw = fake.get(*GW) or {}
    conditions = (gw.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Programmed"), {})


def test_envoy_from_the_generated_config_map_gets_live_config(
    api: apiclient.Cluster,
    fake: server.FakeKube,
    options: envoy_options.BootstrapOptions,
    envoy: conftest.EnvoyStarter,
) -> None:
    snapshots = cache.SnapshotCache()
    breaker = Breaker()
    with runner.ServerThread(snapshots, "127.0.0.1:0") as ads:
        publisher = kxds.Publisher(
            snapshots, kxds.default_address("waypoint-system", ads.port), options, builder=breaker
        )
        controller = manager.Controller(api, watch_timeout=5, publisher=publisher)
        stop = threading.Event()
        runner_thread = threading.Thread(target=controller.run, args=(stop,))
        runner_thread.start()
        try:
            api.apply(gateway.generate_gateway("demo"), "waypoint")
            conftest.wait_for(lambda: fake.get(*CONFIG_MAP) is not None, "the generated ConfigMap")
            config_map = fake.get(*CONFIG_MAP)
            assert config_map is not None
            assert list(config_map["data"]) == ["envoy.yaml"]  # no SDS files: SDS over ADS
            boot = _to_loopback(config_map["data"]["envoy.yaml"], ads.port)
            assert "listeners" not in boot["static_resources"]  # everything else over ADS
            assert boot["node"] == {"id": "waypoint~demo~waypoint", "cluster": "demo/waypoint"}

            proc = envoy(boot, options.admin_port)
            conftest.wait_for(
                lambda: len(_listeners(proc)) > 1, "the waypoint's listeners over ADS"
            )
            # The HBONE terminator, one listener per destination port, probes and stats.
            assert {"connect_terminate", "readiness", "stats"} <= _listeners(proc)
            assert "inbound-vip|80|echo.demo.svc.cluster.local" in _listeners(proc)
            world.mark_ready(fake, "demo", "waypoint")
            conftest.wait_for(lambda: _programmed(fake).get("status") == "True", "Programmed")

            # A route change in the API reaches the running Envoy: no restart, no writes.
            config_version = fake.get(*CONFIG_MAP)["metadata"]["resourceVersion"]  # type: ignore[index]
            template_before = fake.get(*DEPLOYMENT)["spec"]["template"]  # type: ignore[index]
            assert '"/canary"' not in _routes_text(proc)
            route = world.http_route("demo", "echo-route", "echo")
            route["spec"]["rules"][0]["matches"] = [
                {"path": {"type": "PathPrefix", "value": "/canary"}}
            ]
            api.apply(route, "user")
            conftest.wait_for(lambda: '"/canary"' in _routes_text(proc), "the new route in Envoy")
            assert proc.process.poll() is None
            assert fake.get(*CONFIG_MAP)["metadata"]["resourceVersion"] == config_version  # type: ignore[index]
            assert fake.get(*DEPLOYMENT)["spec"]["template"] == template_before  # type: ignore[index]

            # A push Envoy rejects: the Gateway says so, with Envoy's words; the last good
            # config (once Envoy has acknowledged it in full) keeps serving.
            conftest.wait_for(lambda: _acknowledged(snapshots), "Envoy's ACK of the canary config")
            breaker.broken = True
            route["spec"]["rules"][0]["matches"][0]["path"]["value"] = "/broken"
            api.apply(route, "user")
            conftest.wait_for(
                lambda: _programmed(fake).get("status") == "False", "Programmed False"
            )
            condition = _programmed(fake)
            assert condition["reason"] == "Invalid"
            assert "rejected the Listener update" in condition["message"]
            assert condition["message"].endswith("the last good config is still served")
            assert (
                "stat_prefix" in condition["message"].lower()
                or "StatPrefix" in condition["message"]
            )
            assert "broken" not in _listeners(proc)
            assert '"/canary"' in _routes_text(proc)

            # Fixed content goes through and clears the condition.
            breaker.broken = False
            route["spec"]["rules"][0]["matches"][0]["path"]["value"] = "/fixed"
            api.apply(route, "user")
            conftest.wait_for(lambda: '"/fixed"' in _routes_text(proc), "the fixed route in Envoy")
            conftest.wait_for(lambda: _programmed(fake).get("status") == "True", "Programmed again")
            assert not controller.errors
            for obj in _generated(fake):
                kubernetes_validate.validate(obj, "1.32.0", strict=True)
        finally:
            stop.set()
            runner_thread.join(30)


def test_publisher_empties_a_vanished_waypoint(options: envoy_options.BootstrapOptions) -> None:
    snapshots = cache.SnapshotCache()
    publisher = kxds.Publisher(
        snapshots, "waypoint-controller-xds.waypoint-system.svc:15010", options
    )
    objs = [*world.mesh("demo"), gateway.generate_gateway("demo")]
    key = naming.WaypointKey("demo", "waypoint")
    assert publisher.publish(objs).pushed == (key,)
    assert publisher.publish(objs).unchanged == (key,)  # nothing new: nothing pushed
    assert publisher.publish(world.mesh("demo")).removed == (key,)
    current = snapshots.get(key)
    assert current is not None
    assert current.count() == 0


def test_publisher_rejects_a_bad_xds_address(options: envoy_options.BootstrapOptions) -> None:
    with pytest.raises(ValueError, match="no-port"):
        kxds.Publisher(cache.SnapshotCache(), "no-port", options)

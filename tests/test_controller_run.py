"""The running controller against the fake API server: informers, the queue, watch recovery
after 410 Gone and dropped connections, retries with backoff, leader election and metrics."""

from __future__ import annotations

import pathlib
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from tests import conftest
from tests.fakekube import server, world
from waypoint import pipeline
from waypoint.controller import apiclient, leader, manager
from waypoint.envoy import options as envoy_options
from waypoint.kube import gateway

GW = ("gateway.networking.k8s.io/v1", "Gateway", "demo", "waypoint")
PATIENCE = 20.0  # generous: a deadline for progress on a busy machine, not a speed check


def drain(controller: manager.Controller, until: Callable[[], bool], what: str) -> None:
    """Process queued keys on this thread until ``until`` holds."""
    deadline = time.monotonic() + PATIENCE
    while not until():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; errors: {controller.errors}")
        controller.process_one(timeout=0.05)


def _programmed(fake: server.FakeKube) -> bool:
    gw = fake.get(*GW)
    conditions = ((gw or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in conditions)


@pytest.fixture
def informed(api: apiclient.Cluster) -> Iterator[manager.Controller]:
    """A controller whose informers run; the test drives the workers itself."""
    controller = manager.Controller(api, watch_timeout=5)
    controller.start_informers()
    assert controller.wait_synced(threading.Event())
    yield controller
    for informer in controller.informers.values():
        informer.stop()
    for informer in controller.informers.values():
        informer.join(10)


def test_controller_runs_end_to_end(api: apiclient.Cluster, fake: server.FakeKube) -> None:
    controller = manager.Controller(api, watch_timeout=5, resync_period=60)
    stop = threading.Event()
    runner = threading.Thread(target=controller.run, args=(stop,))
    runner.start()
    try:
        api.apply(gateway.generate_gateway("demo"), "waypoint")
        conftest.wait_for(
            lambda: fake.get("apps/v1", "Deployment", "demo", "waypoint") is not None,
            "the Deployment",
        )
        world.mark_ready(fake, "demo", "waypoint")
        conftest.wait_for(lambda: _programmed(fake), "Programmed")
        conftest.wait_for(
            lambda: bool(
                (
                    fake.get("gateway.networking.k8s.io/v1", "HTTPRoute", "demo", "echo-route")
                    or {}
                ).get("status")
            ),
            "route status",
        )
        conftest.wait_for(
            lambda: bool(
                (
                    fake.get("gateway.networking.k8s.io/v1", "GatewayClass", "", "waypoint") or {}
                ).get("status")
            ),
            "GatewayClass status",
        )
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive()
    assert controller.errors == []


def test_steady_state_reconciles_write_nothing(
    informed: manager.Controller, api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    drain(
        informed,
        lambda: fake.get("apps/v1", "Deployment", "demo", "waypoint") is not None,
        "the Deployment",
    )
    world.mark_ready(fake, "demo", "waypoint")
    drain(informed, lambda: _programmed(fake), "Programmed")
    # Let the events caused by our own writes come back and be handled.
    informed.enqueue_all()
    drain(informed, lambda: len(informed.queue) == 0, "an empty queue")
    fake.reset_writes()
    informed.enqueue_all()
    drain(informed, lambda: len(informed.queue) == 0, "an empty queue")
    assert fake.writes == []


def test_watch_expiry_relists_and_recovers(
    informed: manager.Controller, api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    drain(
        informed,
        lambda: fake.get("apps/v1", "Deployment", "demo", "waypoint") is not None,
        "the Deployment",
    )
    services = informed.informers["Service"]
    relists = services.relists
    fake.compact()
    conftest.wait_for(lambda: services.relists > relists, "a relist after 410 Gone")
    api.create(world.service("demo", "reviews", "10.96.1.20"))

    def config_mentions_reviews() -> bool:
        config_map = fake.get("v1", "ConfigMap", "demo", "waypoint-envoy-config") or {}
        return "reviews.demo" in (config_map.get("data") or {}).get("envoy.yaml", "")

    drain(informed, config_mentions_reviews, "the config to include the new Service")
    assert informed.metrics.watch_restarts.labels("Service", "expired")._value.get() >= 1


def test_dropped_watch_resumes_without_relisting(
    informed: manager.Controller, api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    services = informed.informers["Service"]
    conftest.wait_for(lambda: fake.watch_count >= len(informed.informers), "every watch to open")
    relists = services.relists
    fake.drop_watches()
    api.create(world.service("demo", "ratings", "10.96.1.30"))
    conftest.wait_for(lambda: ("demo", "ratings") in services.store, "the new Service in the cache")
    assert services.relists == relists


def test_failed_reconcile_backs_off_and_retries(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    failures = [RuntimeError("renderer exploded")]

    def flaky(
        objs: Sequence[Mapping[str, Any]],
        namespace: str,
        name: str,
        opts: envoy_options.BootstrapOptions,
    ) -> pipeline.Rendered:
        if failures:
            raise failures.pop()
        return pipeline.render(objs, namespace, name, opts)

    controller = manager.Controller(api, renderer=flaky)
    controller.start_informers()
    assert controller.wait_synced(threading.Event())
    api.apply(gateway.generate_gateway("demo"), "waypoint")
    conftest.wait_for(
        lambda: ("demo", "waypoint") in controller.informers["Gateway"].store, "the Gateway"
    )
    key = ("gateway", "demo", "waypoint")
    controller.queue.add(key)
    drain(controller, lambda: bool(controller.errors), "the first, failing reconcile")
    assert controller.queue.failures(key) == 1
    assert "renderer exploded" in controller.errors[0]
    drain(
        controller,
        lambda: fake.get("apps/v1", "Deployment", "demo", "waypoint") is not None,
        "the retry",
    )
    assert controller.queue.failures(key) == 0
    for informer in controller.informers.values():
        informer.stop()


def test_missing_gateway_api_fails_fast(tmp_path: pathlib.Path) -> None:
    with (
        server.FakeKube(gateway_api=False) as bare,
        world.connect(bare, tmp_path) as api,
        pytest.raises(apiclient.MissingKind, match="kubectl apply --server-side"),
    ):
        manager.Controller(api)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_leader_election_with_lease(api: apiclient.Cluster, fake: server.FakeKube) -> None:
    fake.seed([world.namespace("waypoint-system")])
    clock = Clock()
    first = leader.LeaderElector(
        api, "waypoint-system", "waypoint-controller", "a", clock=clock, monotonic=clock
    )
    second = leader.LeaderElector(
        api, "waypoint-system", "waypoint-controller", "b", clock=clock, monotonic=clock
    )
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()
    clock.now += 10
    assert first.try_acquire_or_renew()  # renewal
    clock.now += 16  # first stopped renewing, but second sees this record for the first time
    assert not second.try_acquire_or_renew()
    clock.now += 15  # unchanged for a whole lease duration since second observed it: expired
    assert second.try_acquire_or_renew()
    assert not first.try_acquire_or_renew()
    lease = fake.get("coordination.k8s.io/v1", "Lease", "waypoint-system", "waypoint-controller")
    assert lease is not None
    assert (lease["spec"]["holderIdentity"], lease["spec"]["leaseTransitions"]) == ("b", 1)
    second.is_leader = True
    second.release()
    assert first.try_acquire_or_renew()  # released: no need to wait for expiry


def test_leader_runs_work_and_releases_on_stop(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    fake.seed([world.namespace("waypoint-system")])
    elector = leader.LeaderElector(api, "waypoint-system", "lease", "me", retry_period=0.05)
    stop = threading.Event()
    started = threading.Event()

    def lead(lost: threading.Event) -> None:
        started.set()
        lost.wait()

    runner = threading.Thread(target=elector.run, args=(lead, stop))
    runner.start()
    assert started.wait(PATIENCE)
    stop.set()
    runner.join(PATIENCE)
    lease = fake.get("coordination.k8s.io/v1", "Lease", "waypoint-system", "lease")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == ""


def test_metrics_are_served(informed: manager.Controller) -> None:
    informed.queue.add(manager.ROUTES_KEY)
    while informed.process_one(0):  # the initial lists queued the GatewayClass's key too
        pass
    port = conftest.free_port()
    metrics_server = informed.metrics.serve(f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        metrics_server.shutdown()
    assert 'waypoint_controller_reconciles_total{kind="routes",result="ok"} 1.0' in text

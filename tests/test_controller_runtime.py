"""The controller under a slow or unfriendly API server, and what one change costs.

Against ``tests.fakekube.faulty.FaultyKube`` through the real client: request and watch
timeouts, a hung request that holds up only its own Gateway, an optional kind the controller
may not read, leader election with a delayed renewal, targeted requeues, reads from caches
and one shared translation per change.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests import conftest
from tests.fakekube import faulty, server, world
from waypoint.controller import apiclient, leader, manager
from waypoint.kube import gateway

GW_API = "gateway.networking.k8s.io/v1"
PATIENCE = 30.0  # a deadline for progress on a busy machine, not a speed check


def drain(controller: manager.Controller, until: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not until():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; errors: {controller.errors}")
        controller.process_one(timeout=0.05)


def programmed(fake: server.FakeKube, namespace: str) -> bool:
    gw = fake.get(GW_API, "Gateway", namespace, "waypoint")
    conditions = ((gw or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in conditions)


def class_condition(fake: server.FakeKube, kind: str) -> dict[str, str] | None:
    found = fake.get(GW_API, "GatewayClass", "", "waypoint") or {}
    for condition in (found.get("status") or {}).get("conditions") or []:
        if condition["type"] == kind:
            return dict(condition)
    return None


@pytest.fixture
def fake() -> Iterator[faulty.FaultyKube]:
    with faulty.FaultyKube(bookmark_interval=0.2) as running:
        running.seed([world.gateway_class(), *world.mesh("demo")])
        yield running
        for hang in running.hangs:
            hang.release.set()


def connect(
    fake: server.FakeKube, tmp_path: pathlib.Path, name: str = "kubeconfig", **timeouts: float
) -> apiclient.Cluster:
    path = fake.write_kubeconfig(tmp_path / name)
    return apiclient.Cluster.connect(str(path), timeouts=apiclient.Timeouts(**timeouts))


def start(controller: manager.Controller) -> Callable[[], None]:
    stop = threading.Event()
    runner = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    runner.start()

    def finish() -> None:
        stop.set()
        runner.join(PATIENCE)

    return finish


def kubelet(fake: server.FakeKube, stop: threading.Event) -> None:
    """Mark every Deployment ready once it exists, as the kubelet would."""
    while not stop.wait(0.05):
        for deployment in fake.objects("apps/v1", "Deployment"):
            if not (deployment.get("status") or {}).get("readyReplicas"):
                world.mark_ready(fake, deployment["metadata"]["namespace"], "waypoint")


@pytest.fixture
def ready(fake: faulty.FaultyKube) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=kubelet, args=(fake, stop), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(5)


# --- bounded requests --------------------------------------------------------------------


def test_a_hung_get_times_out(fake: faulty.FaultyKube, tmp_path: pathlib.Path) -> None:
    fake.hang(faulty.get_in_namespace("demo"), 60)
    with connect(fake, tmp_path, read=0.5) as api:
        outcome: list[BaseException] = []

        def get() -> None:
            try:
                api.get(apiclient.SERVICE, "demo", "echo")
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=get, daemon=True)
        thread.start()
        thread.join(PATIENCE)
        assert not thread.is_alive(), "the GET was not bounded by its read timeout"
    assert outcome
    assert isinstance(outcome[0], apiclient.ClusterError)


def test_a_silent_watch_times_out(fake: faulty.FaultyKube, tmp_path: pathlib.Path) -> None:
    fake.hang(faulty.lists_of("services"), 60)
    with connect(fake, tmp_path, watch_grace=0.5) as api:
        outcome: list[BaseException] = []

        def watch() -> None:
            try:
                list(api.watch(apiclient.SERVICE, "1", 1))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        thread.join(PATIENCE)
        assert not thread.is_alive(), "the watch outlived its timeoutSeconds and grace"
    assert outcome
    assert isinstance(outcome[0], apiclient.ClusterError)


def test_a_hung_request_delays_only_its_own_gateway(
    fake: faulty.FaultyKube, tmp_path: pathlib.Path, ready: None
) -> None:
    fake.seed([*world.mesh("slow"), gateway.generate_gateway("slow")])
    hang = fake.hang(faulty.get_in_namespace("slow"), 20)
    with connect(fake, tmp_path) as api:
        controller = manager.Controller(api, watch_timeout=5, resync_period=600)
        finish = start(controller)
        try:
            assert hang.started.wait(PATIENCE), "the slow Gateway was never reconciled"
            api.apply(gateway.generate_gateway("demo"), "waypoint")
            conftest.wait_for(lambda: programmed(fake, "demo"), "demo's Gateway to be Programmed")
            # Ordering, not speed: demo got done while slow's GET was still held.
            assert not hang.release.is_set()
            assert not programmed(fake, "slow")
            hang.release.set()
            conftest.wait_for(lambda: programmed(fake, "slow"), "slow's Gateway once released")
        finally:
            hang.release.set()
            finish()


# --- optional kinds ------------------------------------------------------------------------


def test_a_forbidden_optional_kind_is_left_out(
    fake: faulty.FaultyKube, tmp_path: pathlib.Path, ready: None
) -> None:
    forbid = fake.forbid(faulty.lists_of("requestauthentications"))
    with connect(fake, tmp_path) as api:
        controller = manager.Controller(api, watch_timeout=5, resync_period=600, optional_retry=0.3)
        finish = start(controller)
        try:
            api.apply(gateway.generate_gateway("demo"), "waypoint")
            conftest.wait_for(lambda: programmed(fake, "demo"), "the Gateway to be Programmed")
            conftest.wait_for(
                lambda: (
                    (class_condition(fake, "OptionalKindsAvailable") or {}).get("status") == "False"
                ),
                "the GatewayClass to say a kind is left out",
            )
            condition = class_condition(fake, "OptionalKindsAvailable") or {}
            assert "RequestAuthentication" in condition["message"]
            assert "403" in condition["message"]
            gauge = controller.metrics.kind_unavailable.labels("RequestAuthentication")
            assert gauge._value.get() == 1
            forbid.active = False  # the Role is fixed: picked up without a restart
            conftest.wait_for(
                lambda: (
                    (class_condition(fake, "OptionalKindsAvailable") or {}).get("status") == "True"
                ),
                "the GatewayClass to see the kind again",
            )
            assert gauge._value.get() == 0
            assert controller.informers["RequestAuthentication"].unavailable is None
        finally:
            finish()


# --- leader election -----------------------------------------------------------------------


def test_expiry_is_judged_from_observation_not_the_holders_clock(
    fake: faulty.FaultyKube, tmp_path: pathlib.Path
) -> None:
    fake.seed([world.namespace("waypoint-system")])
    with connect(fake, tmp_path) as api:
        # The holder's wall clock is an hour behind: its renewTime looks long expired.
        behind = leader.LeaderElector(
            api, "waypoint-system", "lease", "behind", clock=lambda: time.time() - 3600
        )
        other = leader.LeaderElector(api, "waypoint-system", "lease", "other")
        assert behind.try_acquire_or_renew()
        assert not other.try_acquire_or_renew()  # observed just now: valid for 15 s from now


def test_a_delayed_renewal_never_makes_two_writers(
    fake: faulty.FaultyKube, tmp_path: pathlib.Path
) -> None:
    fake.seed([world.namespace("waypoint-system")])
    fake.seed(
        [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w", "namespace": "demo"}}]
    )
    stop = threading.Event()
    runners = []
    clusters = [connect(fake, tmp_path, f"kubeconfig-{n}") for n in ("a", "b")]
    delayed: list[faulty.Hang] = []
    try:
        for identity, api in zip(("a", "b"), clusters, strict=True):
            elector = leader.LeaderElector(
                api,
                "waypoint-system",
                "lease",
                identity,
                lease_duration=3,
                renew_deadline=2,
                retry_period=0.2,
            )

            def lead(
                lost: threading.Event, api: apiclient.Cluster = api, me: str = identity
            ) -> None:
                # Write as fast as possible while leading, as a busy controller would.
                while not lost.is_set():
                    with contextlib.suppress(apiclient.ClusterError):
                        api.merge_patch(
                            apiclient.CONFIG_MAP, "demo", "w", {"data": {"writer": me}}, me
                        )
                    time.sleep(0.01)

            runner = threading.Thread(target=elector.run, args=(lead, stop), daemon=True)
            runner.start()
            runners.append(runner)
            if identity == "a":
                conftest.wait_for(lambda: "a" in _writers(fake), "a to lead and write")
                # From now on a's renewals take 6 s: longer than the whole lease.
                delayed.append(fake.hang(faulty.lease_update_by("a"), 6))
        conftest.wait_for(lambda: "b" in _writers(fake), "b to take over", patience=60)
        time.sleep(1.0)  # let any straggling write by a arrive
    finally:
        stop.set()
        for hang in delayed:
            hang.release.set()
        for runner in runners:
            runner.join(PATIENCE)
        for api in clusters:
            api.close()
    order = _writers(fake)
    first_b = order.index("b")
    assert "a" not in order[first_b:], "a wrote after b had started writing"
    assert delayed[0].held >= 1


def _writers(fake: server.FakeKube) -> list[str]:
    """Who wrote the ConfigMap, in arrival order (the field manager of each PATCH)."""
    return [
        request.query.get("fieldManager", "")
        for request in fake.requests_since(0)
        if request.method == "PATCH" and request.path.endswith("/configmaps/w")
    ]


# --- targeted reconciles, caches, one translation -----------------------------------------


@pytest.fixture
def two(fake: faulty.FaultyKube, tmp_path: pathlib.Path) -> Iterator[manager.Controller]:
    """Waypoints in ``demo`` and ``other``, both applied, ready and settled."""
    fake.seed(
        [*world.mesh("other"), gateway.generate_gateway("other"), gateway.generate_gateway("demo")]
    )
    with connect(fake, tmp_path) as api:
        controller = manager.Controller(api, watch_timeout=5)
        controller.start_informers()
        assert controller.wait_synced(threading.Event())
        controller.enqueue_all()
        drain(
            controller,
            lambda: (
                fake.get("apps/v1", "Deployment", "other", "waypoint") is not None
                and fake.get("apps/v1", "Deployment", "demo", "waypoint") is not None
            ),
            "Deployments",
        )
        world.mark_ready(fake, "demo", "waypoint")
        world.mark_ready(fake, "other", "waypoint")
        drain(
            controller, lambda: programmed(fake, "demo") and programmed(fake, "other"), "Programmed"
        )
        settle(controller)
        yield controller
        controller.stop_informers()


def settle(controller: manager.Controller) -> None:
    """Process until the queue has stayed empty for a moment (our own writes echo back)."""
    quiet_since = time.monotonic()
    deadline = quiet_since + PATIENCE
    while time.monotonic() - quiet_since < 0.6:
        if controller.process_one(timeout=0.05):
            quiet_since = time.monotonic()
        if time.monotonic() > deadline:
            pytest.fail("the controller never settled")


def queued(controller: manager.Controller) -> set[object]:
    keys: set[object] = set()
    while (key := controller.queue.get(0)) is not None:
        keys.add(key)
        controller.queue.done(key)
    return keys


def test_a_change_in_one_namespace_requeues_only_its_gateway(
    two: manager.Controller, fake: faulty.FaultyKube
) -> None:
    informer = two.informers["Service"]
    fake.seed([world.service("demo", "added", "10.96.1.99")])
    conftest.wait_for(lambda: ("demo", "added") in informer.store, "the new Service in the cache")
    keys = queued(two)
    assert ("gateway", "demo", "waypoint") in keys
    assert ("gateway", "other", "waypoint") not in keys
    # A Service in another namespace that names demo's waypoint reaches it, and only it.
    labeled = world.service("third", "remote", "10.96.1.98")
    labeled["metadata"]["labels"]["istio.io/use-waypoint-namespace"] = "demo"
    fake.seed([world.namespace("third"), labeled])
    conftest.wait_for(
        lambda: ("third", "remote") in informer.store, "the remote Service in the cache"
    )
    keys = queued(two)
    assert ("gateway", "demo", "waypoint") in keys
    assert ("gateway", "other", "waypoint") not in keys


def test_a_gateway_reconcile_reads_from_caches(
    two: manager.Controller, fake: faulty.FaultyKube
) -> None:
    start_at = fake.request_count
    two.reconciler.reconcile_gateway("demo", "waypoint")
    gets = [r.path for r in fake.requests_since(start_at) if r.method == "GET"]
    # Only the Gateway itself is read from the API server; what it owns comes from caches.
    assert gets == [f"/apis/{GW_API}/namespaces/demo/gateways/waypoint"]


def test_a_resync_translates_the_world_once(
    two: manager.Controller, fake: faulty.FaultyKube
) -> None:
    fake.seed([world.service("demo", "added", "10.96.1.99")])
    conftest.wait_for(lambda: ("demo", "added") in two.informers["Service"].store, "the Service")
    before = two.translations.translated
    two.enqueue_all()
    settle(two)
    # Two Gateways, the GatewayClass and the route status: one translation for all.
    assert two.translations.translated - before == 1
    start_at = fake.request_count
    two.enqueue_all()
    settle(two)
    assert two.translations.translated - before == 1  # nothing changed: none at all
    requests = fake.requests_since(start_at)
    assert [r for r in requests if r.method not in ("GET", "WATCH")] == []
    gateway_gets = [r for r in requests if r.method == "GET" and "/gateways/" in r.path]
    assert len([r for r in requests if r.method == "GET"]) == len(gateway_gets) == 2


def test_watch_retries_back_off_exponentially_with_jitter(
    fake: faulty.FaultyKube, tmp_path: pathlib.Path
) -> None:
    with connect(fake, tmp_path) as api:
        controller = manager.Controller(api)
        informer = controller.informers["Service"]
        delays: list[float] = []
        informer._stop.wait = lambda delay=None: delays.append(delay or 0.0) or False  # type: ignore[method-assign]
        failures = 0
        for _ in range(12):
            failures = informer._back_off(failures, RuntimeError("connection reset"))
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(0.1 * 2**attempt, informer.max_backoff)
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays[-4:]}) > 1, "capped delays still vary (jitter)"

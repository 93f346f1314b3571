"""The controller against the strict fake API server: what it writes is what the server
stores (no quantity rewritten, no field pruned), so its drift check reaches a steady state with
zero writes, and it survives throttling."""

from __future__ import annotations

import threading

import pytest

from tests import conftest
from tests.fakekube import builtin, quantity, server, world
from waypoint.controller import apiclient, manager, reconcile
from waypoint.kube import gateway

PATIENCE = 20.0  # a deadline for progress on a busy machine, not a speed check


@pytest.fixture
def reconciler(api: apiclient.Cluster) -> reconcile.Reconciler:
    return reconcile.Reconciler(
        api, lambda: reconcile.list_world(api), clock=lambda: "2026-01-01T00:00:00Z"
    )


def _converge(reconciler: reconcile.Reconciler, fake: server.FakeKube) -> None:
    reconciler.reconcile_gateway("demo", "waypoint")
    world.mark_ready(fake, "demo", "waypoint", replicas=2)
    assert reconciler.reconcile_gateway("demo", "waypoint").programmed


def test_steady_state_writes_nothing_against_canonical_storage(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    # Two replicas: the Deployment, the autoscaler and the disruption budget are all generated.
    api.apply(gateway.generate_gateway("demo", min_replicas=2, max_replicas=4), "waypoint")
    _converge(reconciler, fake)
    kinds = {w.kind for w in fake.writes}
    assert {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    fake.reset_writes()
    for _ in range(2):
        assert reconciler.reconcile_gateway("demo", "waypoint").writes == 0
    assert fake.writes == []
    # The server kept every quantity as sent and pruned nothing: the drift check compares
    # the desired objects with exactly what was stored.
    assert fake.rewritten == []
    assert fake.warned == []


def test_every_generated_quantity_is_canonical(
    api: apiclient.Cluster, fake: server.FakeKube, reconciler: reconcile.Reconciler
) -> None:
    api.apply(gateway.generate_gateway("demo", min_replicas=2), "waypoint")
    api.apply(
        {
            "apiVersion": "policy.waypoint.dev/v1alpha1",
            "kind": "ExtAuthzPolicy",
            "metadata": {"name": "authz", "namespace": "demo"},
            "spec": {
                "targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                "decision": "envoy/authz/allow",
            },
        },
        "user",
    )
    fake.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "waypoint-extauthz-policy", "namespace": "demo"},
                "data": {
                    "policy.rego": "package envoy.authz\nimport rego.v1\ndefault allow := true\n"
                },
            }
        ]
    )
    reconciler.reconcile_gateway("demo", "waypoint")
    deployment = fake.get("apps/v1", "Deployment", "demo", "waypoint")
    assert deployment is not None
    found = list(builtin.quantities("Deployment", deployment))
    assert len(found) >= 4  # requests and limits of envoy and the extauthz sidecar
    for holder, key, path in found:
        assert quantity.canonical(holder[key]) == holder[key], path
    assert fake.rewritten == []


def test_the_controller_converges_through_throttling(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    """429s with Retry-After on the writes it needs: it waits them out and converges."""
    fake.faults.throttle("patch", "deployments", retry_after=1, times=2)
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
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive()
    assert sum("429" in error for error in controller.errors) == 2
    assert fake.faults.take("patch", "deployments", "demo").throttle == 0  # both were used

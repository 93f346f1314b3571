"""Naming, snapshots, the cache's rules and the xDS bootstrap (validated by real Envoy)."""

from __future__ import annotations

import prometheus_client
import pytest
import yaml

from tests import test_xds_support as support
from waypoint import model
from waypoint.envoy import options as envoy_options
from waypoint.runtime import envoy_process
from waypoint.xds import bootstrap, cache, naming, publish, snapshot

KEY = naming.WaypointKey("apps", "waypoint")


def test_node_names_round_trip() -> None:
    assert naming.parse_node_cluster(naming.node_cluster(KEY)) == KEY
    assert naming.parse_node_id(naming.node_id(KEY)) == (KEY, "")
    assert naming.parse_node_id(naming.node_id(KEY, "waypoint-7d9f-x2")) == (
        KEY,
        "waypoint-7d9f-x2",
    )
    assert naming.key_of_node("apps/waypoint", "") == KEY
    assert naming.key_of_node("", "waypoint~apps~waypoint~pod") == KEY
    # Gateway names may hold dots; namespaces and names never hold "/" or "~".
    dotted = naming.WaypointKey("ns", "wp.v2")
    assert naming.parse_node_cluster(naming.node_cluster(dotted)) == dotted


@pytest.mark.parametrize(
    ("cluster", "node_id"),
    [("apps", ""), ("apps/", ""), ("a/b/c", ""), ("", "sidecar~1.2.3.4~x~y"), ("", "")],
)
def test_bad_nodes_are_refused(cluster: str, node_id: str) -> None:
    with pytest.raises(naming.NodeError):
        naming.key_of_node(cluster, node_id)


def test_versions_are_content_hashes() -> None:
    one = snapshot.build([support.eds_cluster("a"), support.eds_cluster("b")])
    same = snapshot.build([support.eds_cluster("b"), support.eds_cluster("a")])
    other = snapshot.build([support.eds_cluster("a")])
    assert one.version == same.version
    assert one.type_version(snapshot.CLUSTER) == same.type_version(snapshot.CLUSTER)
    assert one.version != other.version
    assert one.of_type(snapshot.CLUSTER)["a"] == other.of_type(snapshot.CLUSTER)["a"]
    assert one.eds_clusters == frozenset({"a", "b"})
    assert list(one.of_type(snapshot.CLUSTER)) == ["a", "b"]


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(snapshot.SnapshotError, match=r"duplicate .*Cluster named 'a'"):
        snapshot.build([support.eds_cluster("a"), support.eds_cluster("a")])


def test_endpoints_are_named_by_their_cluster() -> None:
    snap = snapshot.build([support.endpoints("backend", 80)])
    assert list(snap.of_type(snapshot.ENDPOINT)) == ["backend"]


def _rejected() -> float | None:
    value: float | None = prometheus_client.REGISTRY.get_sample_value(
        "waypoint_xds_rejected", {"waypoint": str(KEY)}
    )
    return value


def _nack(snap: snapshot.Snapshot, message: str = "no") -> cache.Nack:
    return cache.Nack(KEY, "node", snapshot.LISTENER, "v", snap.version, message)


def test_cache_rolls_back_on_nack_and_refuses_the_same_content_again() -> None:
    snapshots = cache.SnapshotCache()
    woken: list[int] = []
    statuses: list[cache.Status] = []
    snapshots.on_status(statuses.append)
    snapshots.watch(KEY, lambda: woken.append(1))
    good = snapshot.build([support.eds_cluster("a")])
    bad = snapshot.build([support.eds_cluster("b")])
    assert snapshots.set(KEY, good)
    assert not snapshots.set(KEY, good)
    snapshots.report_applied(KEY, good.version)
    assert snapshots.last_good(KEY) == good
    assert snapshots.set(KEY, bad)
    snapshots.report_nack(_nack(bad, "listener broken"))
    assert snapshots.get(KEY) == good
    assert _rejected() == 1
    assert snapshots.error(KEY) == _nack(bad, "listener broken")
    assert not snapshots.set(KEY, bad)
    assert len(woken) == 3  # good, bad, rollback; not the refused repeats
    assert statuses == [
        cache.Status(KEY, good.version, None),
        cache.Status(KEY, good.version, _nack(bad, "listener broken")),
    ]
    # A second Envoy rejecting the same snapshot changes nothing more.
    snapshots.report_nack(_nack(bad, "again"))
    assert len(statuses) == 2
    fixed = snapshot.build([support.eds_cluster("c")])
    assert snapshots.set(KEY, fixed)
    snapshots.report_applied(KEY, fixed.version)
    assert snapshots.error(KEY) is None
    assert _rejected() == 0


def test_a_first_snapshot_rejected_stays_with_the_error() -> None:
    snapshots = cache.SnapshotCache()
    bad = snapshot.build([support.eds_cluster("b")])
    snapshots.set(KEY, bad)
    snapshots.report_nack(_nack(bad))
    assert snapshots.get(KEY) == bad  # nothing better to serve
    assert snapshots.last_good(KEY) is None
    assert snapshots.error(KEY) is not None


def test_a_broken_status_callback_does_not_stop_delivery() -> None:
    snapshots = cache.SnapshotCache()

    def broken(status: cache.Status) -> None:
        raise RuntimeError("status writer down")

    snapshots.on_status(broken)
    snap = snapshot.build([support.eds_cluster("a")])
    snapshots.set(KEY, snap)
    snapshots.report_applied(KEY, snap.version)
    assert snapshots.last_good(KEY) == snap


def test_deleting_a_waypoint_serves_it_nothing() -> None:
    snapshots = cache.SnapshotCache()
    assert not snapshots.delete(KEY)
    snapshots.set(KEY, snapshot.build([support.eds_cluster("a")]))
    assert snapshots.delete(KEY)
    assert snapshots.get(KEY) == snapshot.EMPTY


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize(
    "address", ["127.0.0.1:15010", "xds.example.internal:15010", "[::1]:15010"]
)
def test_bootstrap_passes_envoy_validation(delta: bool, address: str) -> None:
    opts = envoy_options.BootstrapOptions(admin_port=15000)
    config = bootstrap.build(address, "apps", "waypoint", opts, delta=delta)
    assert config["node"] == {"id": "waypoint~apps~waypoint", "cluster": "apps/waypoint"}
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
    assert set(config) == {
        "node",
        "admin",
        "dynamic_resources",
        "static_resources",
        "bootstrap_extensions",
    }
    envoy_process.validate_text(yaml.safe_dump(config))


@pytest.mark.parametrize("address", ["15010", "host:", ":15010", "host:99999", "[::1]15010"])
def test_bootstrap_refuses_bad_addresses(address: str) -> None:
    with pytest.raises(bootstrap.AddressError):
        bootstrap.build(address, "apps", "waypoint", envoy_options.BootstrapOptions())


def _waypoint(namespace: str, name: str) -> model.Waypoint:
    identity = model.WaypointIdentity("cluster.local", namespace, name)
    return model.Waypoint(namespace, name, model.TrafficType.SERVICE, identity, None, (), ())


def test_publish_pushes_changes_and_empties_vanished_waypoints() -> None:
    snapshots = cache.SnapshotCache()
    opts = publish.xds_options(envoy_options.BootstrapOptions(cert_dir="/certs"))
    one, two = _waypoint("a", "one"), _waypoint("b", "two")
    first = publish.publish(snapshots, [one, two], opts)
    assert first.pushed == (naming.WaypointKey("a", "one"), naming.WaypointKey("b", "two"))
    again = publish.publish(snapshots, [one, two], opts, first.published)
    assert (again.pushed, again.unchanged) == ((), first.pushed)
    gone = publish.publish(snapshots, [one], opts, again.published)
    assert gone.removed == (naming.WaypointKey("b", "two"),)
    assert snapshots.get(naming.WaypointKey("b", "two")) == snapshot.EMPTY
    served = snapshots.get(naming.WaypointKey("a", "one"))
    assert served is not None
    assert set(served.of_type(snapshot.SECRET)) == {"ROOTCA", "default"}

    def broken(
        waypoint: model.Waypoint, options: envoy_options.BootstrapOptions
    ) -> snapshot.Snapshot:
        raise ValueError("builder bug")

    failed = publish.publish(snapshots, [one], opts, gone.published, broken)
    assert failed.failed == ((naming.WaypointKey("a", "one"), "cannot build config: builder bug"),)
    assert failed.removed == ()
    assert snapshots.get(naming.WaypointKey("a", "one")) == served

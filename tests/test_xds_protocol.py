"""The ADS protocol as a raw gRPC client sees it: order, nonces, ACK/NACK, versions, delta.

These tests drive the server with hand-written DiscoveryRequests, so each rule of the xDS
protocol is checked on its own, message by message, with no Envoy in between.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from tests import test_xds_support as support
from waypoint.xds import cache, naming, runner, snapshot

KEY = naming.WaypointKey("ns", "wp")
NODE = base_pb2.Node(id=naming.node_id(KEY, "pod-1"), cluster=naming.node_cluster(KEY))
CDS, LDS, EDS = snapshot.CLUSTER, snapshot.LISTENER, snapshot.ENDPOINT


def _snap(clusters: list[str], listeners: list[str]) -> snapshot.Snapshot:
    return snapshot.build(
        [support.eds_cluster(c) for c in clusters]
        + [support.direct_listener(name, 1, name) for name in listeners]
    )


class Client:
    """One ADS stream; responses are collected by a thread and handed out in order."""

    def __init__(self, target: str, delta: bool) -> None:
        self.delta = delta
        self.channel = grpc.insecure_channel(target)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self._requests: queue.Queue[Any] = queue.Queue()
        self._responses: queue.Queue[Any] = queue.Queue()
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self._call = method(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.node_sent = False

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as exc:
            self._responses.put(exc)

    def send(self, **fields: Any) -> None:
        if not self.node_sent:
            fields.setdefault("node", NODE)
            self.node_sent = True
        cls = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        self._requests.put(cls(**fields))

    def recv(self) -> Any:
        item = self._responses.get(timeout=10)
        if isinstance(item, Exception):
            raise item
        return item

    def ack(self, response: Any, names: list[str] | None = None) -> None:
        if self.delta:
            self.send(type_url=response.type_url, response_nonce=response.nonce)
        else:
            self.send(
                type_url=response.type_url,
                response_nonce=response.nonce,
                version_info=response.version_info,
                resource_names=names or [],
            )

    def close(self) -> None:
        self._requests.put(None)
        self.channel.close()


def names(response: Any) -> list[str]:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in response.resources]
    found = []
    for body in response.resources:
        msg = cluster_pb2.Cluster() if response.type_url == CDS else listener_pb2.Listener()
        body.Unpack(msg)
        found.append(msg.name)
    return found


@pytest.fixture
def server() -> Iterator[runner.ServerThread]:
    with runner.ServerThread(cache.SnapshotCache(), removal_delay=0.0) as xds:
        yield xds


@pytest.fixture
def client_factory(server: runner.ServerThread) -> Iterator[Any]:
    clients: list[Client] = []

    def make(delta: bool = False) -> Client:
        clients.append(Client(server.target, delta))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def test_clusters_go_first_and_a_change_adds_before_it_removes(
    server: runner.ServerThread, client_factory: Any
) -> None:
    server.cache.set(KEY, _snap(["c1"], ["l1"]))
    client = client_factory()
    # As Envoy does: clusters first, listeners right after.
    client.send(type_url=CDS)
    client.send(type_url=LDS)
    cds = client.recv()
    assert (cds.type_url, names(cds)) == (CDS, ["c1"])
    client.ack(cds)
    lds = client.recv()
    assert (lds.type_url, names(lds)) == (LDS, ["l1"])
    client.ack(lds)
    support.wait_for(lambda: server.cache.last_good(KEY) is not None, what="applied")

    server.cache.set(KEY, _snap(["c2"], ["l2"]))
    widened = client.recv()
    assert (widened.type_url, sorted(names(widened))) == (CDS, ["c1", "c2"])
    client.ack(widened)
    moved = client.recv()
    assert (moved.type_url, names(moved)) == (LDS, ["l2"])
    client.ack(moved)
    narrowed = client.recv()
    assert (narrowed.type_url, names(narrowed)) == (CDS, ["c2"])
    assert len({cds.nonce, widened.nonce, narrowed.nonce, lds.nonce, moved.nonce}) == 5
    client.ack(narrowed)
    support.wait_for(lambda: server.cache.last_good(KEY) == server.cache.get(KEY), what="applied")


def test_an_unchanged_snapshot_is_never_pushed_again(
    server: runner.ServerThread, client_factory: Any
) -> None:
    first = _snap(["c1"], [])
    assert server.cache.set(KEY, first)
    client = client_factory()
    client.send(type_url=CDS)
    response = client.recv()
    client.ack(response)
    assert not server.cache.set(KEY, _snap(["c1"], []))
    # Identical content rebuilt from scratch has the same version; the next push is the
    # next real change, nothing in between.
    assert server.cache.set(KEY, _snap(["c1", "c3"], []))
    following = client.recv()
    assert sorted(names(following)) == ["c1", "c3"]
    assert following.version_info != response.version_info


def test_a_sotw_client_that_already_has_the_content_gets_nothing(
    server: runner.ServerThread, client_factory: Any
) -> None:
    current = _snap(["c1"], [])
    server.cache.set(KEY, current)
    client = client_factory()
    # As after a server restart: the Envoy reports the version it holds.
    client.send(type_url=CDS, version_info=current.type_version(CDS))
    server.cache.set(KEY, _snap(["c2"], []))
    response = client.recv()
    assert names(response) == ["c2"]


def test_a_stale_nack_is_ignored_and_a_current_one_rolls_back(
    server: runner.ServerThread, client_factory: Any
) -> None:
    good, bad = _snap(["c1"], ["l1"]), _snap(["c1"], ["l1", "broken"])
    server.cache.set(KEY, good)
    client = client_factory()
    client.send(type_url=CDS)
    client.ack(client.recv())
    client.send(type_url=LDS)
    first = client.recv()
    client.ack(first)
    support.wait_for(lambda: server.cache.last_good(KEY) == good, what="good applied")
    server.cache.set(KEY, bad)
    pushed = client.recv()
    assert sorted(names(pushed)) == ["broken", "l1"]
    # A NACK naming an old nonce answers a superseded response: ignored.
    error = status_pb2.Status(code=3, message="old news")
    client.send(type_url=LDS, response_nonce=first.nonce, error_detail=error)
    # The NACK of the current push rolls the waypoint back to its last good snapshot.
    error = status_pb2.Status(code=3, message="listener broken: bad filter")
    client.send(
        type_url=LDS,
        response_nonce=pushed.nonce,
        version_info=first.version_info,
        error_detail=error,
    )
    rolled_back = client.recv()
    assert names(rolled_back) == ["l1"]
    assert rolled_back.version_info == first.version_info
    nack = server.cache.error(KEY)
    assert nack is not None
    assert (nack.message, nack.type_url, nack.snapshot_version) == (error.message, LDS, bad.version)
    assert nack.node_id == NODE.id
    assert server.cache.get(KEY) == good


def test_delta_sends_only_differences_and_removes_after_listeners_move(
    server: runner.ServerThread, client_factory: Any
) -> None:
    current = _snap(["c1", "c2"], ["l1"])
    server.cache.set(KEY, current)
    client = client_factory(delta=True)
    c1_version = current.of_type(CDS)["c1"].version
    client.send(type_url=CDS, initial_resource_versions={"c1": c1_version, "gone": "0"})
    added = client.recv()
    assert names(added) == ["c2"]  # c1 is current already
    assert list(added.removed_resources) == []  # "gone" may still be in use by a listener
    client.ack(added)
    client.send(type_url=LDS)
    listeners = client.recv()
    assert names(listeners) == ["l1"]
    client.ack(listeners)
    removal = client.recv()
    assert (removal.type_url, names(removal), list(removal.removed_resources)) == (
        CDS,
        [],
        ["gone"],
    )
    client.ack(removal)
    support.wait_for(lambda: server.cache.last_good(KEY) == current, what="applied")


def test_delta_named_subscriptions(server: runner.ServerThread, client_factory: Any) -> None:
    snap = snapshot.build([support.endpoints("c1", 1), support.endpoints("c2", 2)])
    server.cache.set(KEY, snap)
    client = client_factory(delta=True)
    client.send(type_url=EDS, resource_names_subscribe=["c2"])
    first = client.recv()
    assert names(first) == ["c2"]
    client.send(
        type_url=EDS,
        response_nonce=first.nonce,
        resource_names_subscribe=["c1"],
        resource_names_unsubscribe=["c2"],
    )
    second = client.recv()
    assert names(second) == ["c1"]
    assert list(second.removed_resources) == []


def test_each_node_gets_only_its_own_waypoint(
    server: runner.ServerThread, client_factory: Any
) -> None:
    other = naming.WaypointKey("ns", "other")
    server.cache.set(KEY, _snap(["mine"], []))
    server.cache.set(other, _snap(["theirs"], []))
    mine = client_factory()
    mine.send(type_url=CDS)
    theirs = client_factory(delta=True)
    theirs.send(type_url=CDS, node=base_pb2.Node(id="anything", cluster=naming.node_cluster(other)))
    assert names(mine.recv()) == ["mine"]
    assert names(theirs.recv()) == ["theirs"]
    assert [row[0] for row in server.connected()] == ["ns/other", "ns/wp"]


def test_a_node_that_names_no_waypoint_is_refused(
    server: runner.ServerThread, client_factory: Any
) -> None:
    client = client_factory()
    client.send(type_url=CDS, node=base_pb2.Node(id="sidecar~10.0.0.1~pod.ns~ns.svc"))
    with pytest.raises(grpc.RpcError) as caught:
        client.recv()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "waypoint~<namespace>~<name>" in (caught.value.details() or "")


def test_a_waypoint_without_config_waits_for_its_first_snapshot(
    server: runner.ServerThread, client_factory: Any
) -> None:
    client = client_factory()
    client.send(type_url=CDS)
    support.wait_for(lambda: len(server.connected()) == 1, what="stream open")
    server.cache.set(KEY, _snap(["late"], []))
    assert names(client.recv()) == ["late"]


def test_a_nonce_from_before_a_reconnect_still_subscribes(
    server: runner.ServerThread, client_factory: Any
) -> None:
    server.cache.set(KEY, _snap(["c1"], []))
    client = client_factory()
    client.send(type_url=CDS, response_nonce="41", version_info="from-the-old-server")
    assert names(client.recv()) == ["c1"]

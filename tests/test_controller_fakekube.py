"""The fake API server behaves like the real one where the controller depends on it, driven
through ``waypoint.controller.apiclient`` (the real ``kubernetes`` dynamic client)."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator

import pytest

from tests.fakekube import server, world
from waypoint.controller import apiclient


@pytest.fixture
def fake() -> Iterator[server.FakeKube]:
    with server.FakeKube() as running:
        running.seed([world.namespace("demo")])
        yield running


def _config_map(data: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, object]:
    meta: dict[str, object] = {"name": "cm", "namespace": "demo"}
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def test_create_get_and_already_exists(api: apiclient.Cluster, fake: server.FakeKube) -> None:
    created = api.create(_config_map({"a": "1"}))
    assert created["metadata"]["uid"]
    assert api.get(apiclient.CONFIG_MAP, "demo", "cm") == created
    with pytest.raises(apiclient.Conflict, match="already exists"):
        api.create(_config_map({"a": "1"}))
    assert api.get(apiclient.CONFIG_MAP, "demo", "absent") is None
    assert [w.verb for w in fake.writes] == ["POST"]


def test_missing_namespace_is_not_found(api: apiclient.Cluster) -> None:
    obj = _config_map({})
    obj["metadata"]["namespace"] = "nowhere"  # type: ignore[index]
    with pytest.raises(apiclient.ClusterError, match='namespaces "nowhere" not found'):
        api.apply(obj)


def test_server_side_apply_owns_and_prunes_fields(api: apiclient.Cluster) -> None:
    api.apply(_config_map({"a": "1", "b": "2"}, {"x": "1"}), "mgr")
    api.merge_patch(apiclient.CONFIG_MAP, "demo", "cm", {"data": {"c": "3"}}, "someone-else")
    applied = api.apply(_config_map({"a": "1"}), "mgr")
    # Our dropped fields go; the other manager's field stays.
    assert applied["data"] == {"a": "1", "c": "3"}
    assert "labels" not in applied["metadata"]
    managers = {
        entry["manager"]: entry["operation"] for entry in applied["metadata"]["managedFields"]
    }
    assert managers == {"mgr": "Apply", "someone-else": "Update"}


def test_apply_conflict_unless_forced(api: apiclient.Cluster) -> None:
    api.apply(_config_map({"a": "1"}), "first")
    with pytest.raises(apiclient.Conflict, match='conflict with "first"'):
        api.apply(_config_map({"a": "2"}), "second", force=False)
    assert api.apply(_config_map({"a": "2"}), "second", force=True)["data"] == {"a": "2"}


def test_dry_run_changes_nothing(api: apiclient.Cluster, fake: server.FakeKube) -> None:
    result = api.apply(_config_map({"a": "1"}), "mgr", dry_run=True)
    assert result["data"] == {"a": "1"}
    assert api.get(apiclient.CONFIG_MAP, "demo", "cm") is None
    assert fake.writes == []


def test_resource_version_conflict_on_update(api: apiclient.Cluster) -> None:
    created = api.create(_config_map({"a": "1"}))
    api.merge_patch(apiclient.CONFIG_MAP, "demo", "cm", {"data": {"a": "2"}})
    stale = {**created, "data": {"a": "3"}}
    with pytest.raises(apiclient.Conflict, match="has been modified"):
        api.replace(stale)


def test_status_subresource_is_separate(api: apiclient.Cluster) -> None:
    gw = api.apply(world.gateway_class())
    assert "status" not in gw
    updated = api.replace_status({**gw, "status": {"conditions": []}})
    assert updated["status"] == {"conditions": []}
    assert updated["metadata"]["generation"] == gw["metadata"]["generation"]
    # A main-resource write cannot change the status.
    again = api.apply({**world.gateway_class(), "status": {"conditions": [{"type": "X"}]}})
    assert again["status"] == {"conditions": []}


def test_delete_cascades_to_owned_objects(api: apiclient.Cluster) -> None:
    owner = api.create(_config_map({}))
    dependent = _config_map({})
    dependent["metadata"] = {
        "name": "dependent",
        "namespace": "demo",
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": owner["metadata"]["uid"]}
        ],
    }
    api.create(dependent)
    assert api.delete(apiclient.CONFIG_MAP, "demo", "cm") is True
    assert api.get(apiclient.CONFIG_MAP, "demo", "dependent") is None
    assert api.delete(apiclient.CONFIG_MAP, "demo", "cm") is False


def test_list_with_label_selector(api: apiclient.Cluster) -> None:
    api.create(_config_map({}, {"app": "a"}))
    items, rv = api.list(apiclient.CONFIG_MAP, "demo", "app=a")
    assert [item["metadata"]["name"] for item in items] == ["cm"]
    assert items[0]["kind"] == "ConfigMap"
    assert rv.isdigit()
    assert api.list(apiclient.CONFIG_MAP, "demo", "app=b")[0] == []


def test_watch_streams_from_a_resource_version_then_410_after_compaction(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    _, rv = api.list(apiclient.CONFIG_MAP)
    api.create(_config_map({"a": "1"}))
    events = [
        (kind, obj["metadata"]["name"])
        for kind, obj in api.watch(apiclient.CONFIG_MAP, rv, timeout_seconds=1)
        if kind != "BOOKMARK"
    ]
    assert events == [("ADDED", "cm")]
    fake.compact()
    with pytest.raises(apiclient.Gone):
        list(api.watch(apiclient.CONFIG_MAP, rv, timeout_seconds=1))


def test_active_watch_gets_410_when_history_is_dropped(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    _, rv = api.list(apiclient.CONFIG_MAP)
    outcome: list[str] = []

    def watch() -> None:
        try:
            for kind, _obj in api.watch(apiclient.CONFIG_MAP, rv, timeout_seconds=30):
                outcome.append(kind)
        except apiclient.Gone:
            outcome.append("GONE")

    thread = threading.Thread(target=watch)
    thread.start()
    api.create(_config_map({}))
    while "ADDED" not in outcome:
        thread.join(0.05)
    fake.compact()
    thread.join(10)
    assert outcome[-1] == "GONE"


def test_missing_gateway_api_is_reported_with_install_hint(tmp_path: pathlib.Path) -> None:
    with server.FakeKube(gateway_api=False) as bare, world.connect(bare, tmp_path) as api:
        with pytest.raises(apiclient.MissingKind, match="install the Gateway API CRDs"):
            api.get(apiclient.GATEWAY, "demo", "waypoint")
        assert api.serves(apiclient.SERVICE)

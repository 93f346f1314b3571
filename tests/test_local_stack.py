"""LocalStack: a world of Kubernetes objects served by echo pods, terminators and real Envoy.

The world here is small but has every kind of backend the stack derives: a mesh pod with
HTTP, gRPC and TCP ports (reached through its own HBONE terminator) and a pod that opted out
of the mesh (reached in plain). Addresses are 127.0.31.x so nothing else on the machine is in
the way; ports are unusual for the same reason.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from loadtests import procs
from tests import conftest
from waypoint import model, names, pipeline
from waypoint.local import echo, workloads
from waypoint.local import stack as stack_mod
from waypoint.local.hbone import echo_pb2, errors, grpcwire
from waypoint.runtime import inputs

NS = "shop"
NET = "127.0.31"  # the module's stack; start/stop tests use their own NET beside it
WEB_IP, PLAIN_IP = f"{NET}.1", f"{NET}.2"
WEB_POD, PLAIN_POD = "web-7c9d5f-x2k7q", "plain-5d8f7c-m4n9p"
HTTP_PORT, GRPC_PORT, TCP_PORT, PLAIN_PORT = 18180, 17170, 19190, 18181


def _meta(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    api = {"Namespace": "v1", "Service": "v1", "Pod": "v1"}.get(kind, "")
    api = api or (
        "discovery.k8s.io/v1" if kind == "EndpointSlice" else "gateway.networking.k8s.io/v1"
    )
    meta: dict[str, Any] = {"name": name, **({} if kind == "Namespace" else {"namespace": NS})}
    return {"apiVersion": api, "kind": kind, "metadata": meta, **extra}


def _service(name: str, vip: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return _meta(
        "Service", name, spec={"clusterIP": vip, "selector": {"app": name}, "ports": ports}
    )


def _pod(name: str, ip: str, labels: dict[str, str], account: str) -> dict[str, Any]:
    pod = _meta("Pod", name, spec={"serviceAccountName": account}, status={"podIP": ip})
    pod["metadata"]["labels"] = labels
    return pod


def _slice(service: str, pod: str, ip: str, ports: list[tuple[str, int]]) -> dict[str, Any]:
    obj = _meta(
        "EndpointSlice",
        f"{service}-abcde",
        addressType="IPv4",
        ports=[{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
        endpoints=[
            {
                "addresses": [ip],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "namespace": NS, "name": pod},
            }
        ],
    )
    obj["metadata"]["labels"] = {workloads.SERVICE_NAME_LABEL: service}
    return obj


def _world(net: str = NET) -> list[dict[str, Any]]:
    namespace = _meta("Namespace", NS)
    namespace["metadata"]["labels"] = {
        "istio.io/dataplane-mode": "ambient",
        "istio.io/use-waypoint": "waypoint",
    }
    gateway = _meta(
        "Gateway",
        "waypoint",
        spec={
            "gatewayClassName": "waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    )
    web_ports = [
        {"name": "http", "port": 80, "targetPort": HTTP_PORT, "appProtocol": "http"},
        {"name": "grpc", "port": 7070, "targetPort": GRPC_PORT},
        {"name": "tcp", "port": 9090, "targetPort": TCP_PORT},
    ]
    plain_ports = [{"name": "http", "port": 80, "targetPort": PLAIN_PORT}]
    return [
        namespace,
        gateway,
        _service("web", "10.96.31.10", web_ports),
        _service("plain", "10.96.31.11", plain_ports),
        _pod(WEB_POD, f"{net}.1", {"app": "web", "version": "v3"}, "web"),
        _pod(PLAIN_POD, f"{net}.2", {"app": "plain", "istio.io/dataplane-mode": "none"}, "plain"),
        _slice(
            "web",
            WEB_POD,
            f"{net}.1",
            [("http", HTTP_PORT), ("grpc", GRPC_PORT), ("tcp", TCP_PORT)],
        ),
        _slice("plain", PLAIN_POD, f"{net}.2", [("http", PLAIN_PORT)]),
    ]


def _route(name: str, backend: str, response_header: tuple[str, str]) -> dict[str, Any]:
    return _meta(
        "HTTPRoute",
        name,
        spec={
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [
                {
                    "filters": [
                        {
                            "type": "ResponseHeaderModifier",
                            "responseHeaderModifier": {
                                "set": [{"name": response_header[0], "value": response_header[1]}]
                            },
                        }
                    ],
                    "backendRefs": [{"name": backend, "port": 80}],
                }
            ],
        },
    )


# --- the plan (pure) ----------------------------------------------------------------------


def test_plan_derives_pods_ports_protocols_and_mesh_membership() -> None:
    plan = {w.address: w for w in workloads.plan(_world())}
    web, plain = plan[WEB_IP], plan[PLAIN_IP]
    assert (web.namespace, web.name, web.service_account, web.mesh, web.version) == (
        NS,
        WEB_POD,
        "web",
        True,
        "v3",
    )
    assert web.ports == (  # sorted by port
        (GRPC_PORT, model.Protocol.HTTP2),
        (HTTP_PORT, model.Protocol.HTTP),
        (TCP_PORT, model.Protocol.TCP),
    )
    assert (plain.mesh, plain.ports) == (False, ((PLAIN_PORT, model.Protocol.HTTP),))


def test_plan_of_the_repo_example_world() -> None:
    objects = inputs.load_objects([conftest.REPO / "examples" / "local" / "world.yaml"])
    plan = workloads.plan(objects)
    assert [(w.address, w.name, w.service_account, w.mesh) for w in plan] == [
        ("127.0.10.1", "echo-v1-5d8f7c9b4-x2k7q", "echo", True),
        ("127.0.10.2", "echo-v2-7b6c5d4f8-m4n9p", "echo", True),
    ]


def test_plan_names_an_address_without_pod_and_keeps_the_richest_protocol() -> None:
    objects = _world()
    extra = copy.deepcopy(objects[-1])  # the plain slice, as if a second Service shared it
    extra["metadata"]["name"] = "plain-grpc"
    extra["ports"] = [{"name": "grpc", "port": PLAIN_PORT}]
    extra["endpoints"].append({"addresses": ["127.0.31.9"]})
    plan = {w.address: w for w in workloads.plan([*objects, extra])}
    assert plan[PLAIN_IP].ports == ((PLAIN_PORT, model.Protocol.HTTP2),)
    orphan = plan["127.0.31.9"]
    assert (orphan.name, orphan.namespace, orphan.service_account, orphan.mesh) == (
        "ep-127-0-31-9",
        NS,
        "default",
        True,  # no Pod: the namespace label decides
    )


def test_plan_rejects_a_bad_address_naming_the_slice() -> None:
    objects = _world()
    objects[-1]["endpoints"][0]["addresses"] = ["not-an-ip"]
    with pytest.raises(workloads.WorldError, match=r"EndpointSlice shop/plain-abcde.*not-an-ip"):
        workloads.plan(objects)


# --- the running stack --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_mod.LocalStack]:
    with stack_mod.LocalStack(
        _world(), NS, "waypoint", workdir=tmp_path_factory.mktemp("local")
    ) as running:
        yield running


def _get(stack: stack_mod.LocalStack, service: str, path: str = "/") -> tuple[echo.EchoReport, Any]:
    with stack.client("client", "sleep") as hbone:
        response = hbone.request(stack.authority(NS, service, 80), path=path, host=service)
    assert response.status == 200, response.text
    return echo.parse_echo(response.body), response


def test_waypoint_reaches_a_mesh_pod_through_its_own_terminator(
    stack: stack_mod.LocalStack,
) -> None:
    terminator = stack.backends[WEB_IP].terminator
    assert terminator is not None
    before = len(terminator.records)
    report, _ = _get(stack, "web", "/hello")
    assert (report.hostname, report.namespace, report.url) == (WEB_POD, NS, "/hello")
    record = terminator.records[before]
    assert (record.peer_id, record.authority) == (stack.waypoint_id, f"{WEB_IP}:{HTTP_PORT}")
    assert stack.backends[WEB_IP].spiffe_id == names.spiffe_id("cluster.local", NS, "web")


def test_waypoint_reaches_an_opted_out_pod_in_plain(stack: stack_mod.LocalStack) -> None:
    assert stack.backends[PLAIN_IP].terminator is None
    report, _ = _get(stack, "plain", "/legacy")
    assert (report.hostname, report.namespace, report.url) == (PLAIN_POD, NS, "/legacy")


def test_grpc_and_tcp_ports_of_a_mesh_pod(stack: stack_mod.LocalStack) -> None:
    with stack.client() as hbone:
        result = hbone.grpc_unary(
            stack.authority(NS, "web", 7070),
            "/proto.EchoTestService/Echo",
            echo_pb2.EchoRequest(message="hi").SerializeToString(),
        )
        assert result.status == grpcwire.OK, result.details
        report = echo.parse_echo(echo_pb2.EchoResponse.FromString(result.message).message)
        assert (report.hostname, report.message) == (WEB_POD, "hi")
        with hbone.open_tunnel(stack.authority(NS, "web", 9090)) as tunnel:
            tunnel.send(b"ping")
            tunnel.shutdown_write()
            assert tunnel.recv_all() == f"Hostname={WEB_POD}\n".encode() + b"ping"


def test_the_waypoint_presents_its_gateway_identity(stack: stack_mod.LocalStack) -> None:
    assert stack.waypoint_id == names.spiffe_id("cluster.local", NS, "waypoint")
    with stack.client() as hbone:
        hbone.connect()
        assert hbone.peer_id == stack.waypoint_id


def test_reload_restarts_envoy_only_and_applies_new_routes(stack: stack_mod.LocalStack) -> None:
    echoes = {address: backend.echo for address, backend in stack.backends.items()}
    pid = stack.proxy.process.pid
    stack.reload([*_world(), _route("web", "web", ("x-via", "route"))])
    try:
        assert stack.proxy.process.pid != pid
        assert {a: b.echo for a, b in stack.backends.items()} == echoes
        report, response = _get(stack, "web")
        assert (report.hostname, response.header("x-via")) == (WEB_POD, "route")
    finally:
        stack.reload(_world())
    assert _get(stack, "web")[1].header("x-via") is None


def test_reload_with_the_same_world_keeps_envoy(stack: stack_mod.LocalStack) -> None:
    pid = stack.proxy.process.pid
    stack.reload(_world())
    assert stack.proxy.process.pid == pid


def test_statuses_expose_rejected_routes(stack: stack_mod.LocalStack) -> None:
    assert stack.problems() == ()
    stack.reload([*_world(), _route("broken", "missing", ("x-via", "nowhere"))])
    try:
        refs = [str(status.ref) for status in stack.problems()]
        assert refs == ["HTTPRoute.gateway.networking.k8s.io/shop/broken"]
        assert any(str(s.ref).endswith("/shop/broken") for s in stack.statuses)
    finally:
        stack.reload(_world())


def test_reload_that_does_not_render_leaves_the_stack_running(stack: stack_mod.LocalStack) -> None:
    pid = stack.proxy.process.pid
    without_gateway = [o for o in _world() if o["kind"] != "Gateway"]
    with pytest.raises(pipeline.WaypointNotFound):
        stack.reload(without_gateway)
    assert stack.proxy.process.pid == pid
    assert _get(stack, "web")[0].hostname == WEB_POD


def test_pod_addresses_hop_straight_to_the_pod(stack: stack_mod.LocalStack) -> None:
    direct = f"{WEB_IP}:{HTTP_PORT}"
    address, server_id = stack.hop(direct)
    assert (address, server_id) == (
        (WEB_IP, stack.options.upstream_hbone_port),
        stack.backends[WEB_IP].spiffe_id,
    )
    assert stack.hop(stack.authority(NS, "web", 80)) == (stack.waypoint_address, stack.waypoint_id)
    with stack.client("client", "sleep", destination=direct) as hbone:
        response = hbone.request(direct, path="/direct")
    assert echo.parse_echo(response.body).hostname == WEB_POD
    assert stack.pod_address(NS, WEB_POD) == WEB_IP


def test_unknown_destinations_are_refused(stack: stack_mod.LocalStack) -> None:
    with pytest.raises(stack_mod.StackError, match="neither served"):
        stack.hop(f"{PLAIN_IP}:{PLAIN_PORT}")  # not in the mesh: no terminator to reach
    with pytest.raises(stack_mod.StackError, match="no Service shop/nothing"):
        stack.authority(NS, "nothing", 80)
    with stack.client() as hbone, pytest.raises(errors.TunnelRejected) as caught:
        hbone.request("10.96.31.99:80")
    assert caught.value.status == 404


OTHER_NET = "127.0.32"


def test_stop_tears_everything_down() -> None:
    running = stack_mod.LocalStack(_world(OTHER_NET), NS, "waypoint", workdir=None)
    with running:
        workdir = running.workdir
        proxy = running.proxy
        upstream = running.options.upstream_hbone_port
        assert not procs.bindable(f"{OTHER_NET}.1", HTTP_PORT)
    assert proxy.process.poll() is not None
    assert not workdir.exists()
    assert procs.bindable(f"{OTHER_NET}.1", HTTP_PORT)
    assert procs.bindable(f"{OTHER_NET}.1", upstream)
    with running:  # a stopped stack starts again from scratch
        assert running.workdir != workdir
        assert _get(running, "web")[0].hostname == WEB_POD


def test_a_failed_start_leaves_nothing_behind(tmp_path: pathlib.Path) -> None:
    broken = stack_mod.LocalStack(_world(OTHER_NET), NS, "no-such-waypoint", workdir=tmp_path / "w")
    with pytest.raises(pipeline.WaypointNotFound, match="no-such-waypoint"):
        broken.start()
    assert procs.bindable(f"{OTHER_NET}.1", HTTP_PORT)
    assert procs.bindable(f"{OTHER_NET}.2", PLAIN_PORT)
    assert broken.backends == {}
    assert not list((tmp_path / "w").glob("envoy-*.log"))

"""``waypoint explain`` end to end: arguments, URL resolution, output, and the errors that say
why a Service is not served."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from tests import conftest
from tests import test_simulate as worlds
from waypoint.commands import explain

# Services the shop waypoint does not serve, each for its own reason.
UNSERVED = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec:
  gatewayClassName: waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Namespace
metadata: {name: elsewhere}
---
apiVersion: v1
kind: Service
metadata: {name: optout, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.0.0.4, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: byother, namespace: shop, labels: {istio.io/use-waypoint: other}}
spec: {clusterIP: 10.0.0.5, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: elsewhere}
spec: {clusterIP: 10.0.0.6, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ghostly, namespace: shop, labels: {istio.io/use-waypoint: ghost}}
spec: {clusterIP: 10.0.0.7, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, ports: [{name: http, port: 80}]}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("explain") / "world.yaml"
    path.write_text(worlds.SHOP + UNSERVED)
    return path


def _run(
    capsys: pytest.CaptureFixture[str], *argv: str, waypoint: str = "shop/waypoint"
) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="waypoint")
    explain.register(parser.add_subparsers())
    args = parser.parse_args(["explain", "--waypoint", waypoint, *argv])
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_trace(world: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys, "-f", str(world), "--from", "shop/web", "-X", "post", "http://api.shop/p/x"
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:3] == [
        "POST http://api.shop/p/x",
        "  from spiffe://cluster.local/ns/shop/sa/web",
        "  through waypoint shop/waypoint, CONNECT 10.0.0.1:80",
    ]
    assert (
        "hbone: connect_terminate route 10.0.0.1:80 -> cluster inbound-vip|80|api.shop.svc.cluster.local"
        in lines
    )
    assert "route: httproute/shop/api/1/0" in lines
    assert "  HTTPRoute shop/api, rule 1, match 0" in lines
    assert "  skipped httproute/shop/api/3/0: path '/p/x' does not match path '/p/exact'" in lines
    assert lines[-1] == (
        "result: forwarded to outbound|80||api-v2.shop.svc.cluster.local; the upstream answers"
    )
    # The rule whose backend does not exist is reported, since it is missing from the config.
    assert any(line.startswith("note: HTTPRoute") and "nowhere" in line for line in lines)


def test_json_trace(world: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys,
        "-f",
        str(world),
        "-H",
        "Host: shop.example:8080",
        "-o",
        "json",
        "http://10.0.0.1/moved/here?x=1",
    )
    assert code == 0
    data = json.loads(out)
    assert data["route"] == "httproute/shop/api/8/0"
    assert data["request"]["host"] == "shop.example:8080"
    assert data["action"]["location"] == "https://new.example:8443/moved/here?x=1"
    assert data["status"] == 302
    assert data["notes"]


def test_consumer_route_and_short_name(
    world: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "-f", str(world), "--from", "client-a/x", "http://api.shop/p")
    assert code == 0
    assert "route: consumer-default/client-a/api/80/0" in out
    assert "result: Envoy answers 404" in out
    # A bare service name resolves in the client's namespace, as cluster DNS does.
    code, out, _ = _run(capsys, "-f", str(world), "--from", "shop/x", "http://api:5432/")
    assert code == 0
    assert "listener: inbound-vip|5432|api.shop.svc.cluster.local (TCP)" in out
    assert "action: tcp proxy" in out


def test_example_world(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(conftest.REPO / "examples" / "local" / "world.yaml")
    code, out, _ = _run(
        capsys, "-f", example, "http://echo.demo.svc.cluster.local/", waypoint="demo/waypoint"
    )
    assert code == 0
    assert "  cluster outbound|80||echo-v1.demo.svc.cluster.local 80% (weight 80)" in out
    assert "  cluster outbound|80||echo-v2.demo.svc.cluster.local 20% (weight 20)" in out
    assert "  response headers: add x-canary: true" in out
    # echo-v1 has an ExtAuthzPolicy: the result says the check decides before the upstream.
    policies = str(conftest.REPO / "examples" / "local" / "policies.yaml")
    code, out, _ = _run(
        capsys, "-f", example, "-f", policies, "http://echo-v1.demo/admin", waypoint="demo/waypoint"
    )
    assert code == 0
    assert "result: ext_authz decides first (not simulated); if it allows, forwarded to" in out


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://nope.shop/", "no Service shop/nope in the input (Services in shop: "),
        ("http://api.shop:81/", "Service shop/api has no port 81 (ports: 80, 5432)"),
        ("http://api/", "'api': write <service>.<namespace>, or give --from NS/SA"),
        ("http://a.b.c/", "'a.b.c' is not <service>.<namespace>"),
        ("https://api.shop/", "expected http://HOST[:PORT]/PATH"),
        ("http://headless.shop/", "Service shop/headless has no ClusterIP (headless?)"),
        ("http://10.9.9.9/", "10.9.9.9:80 is not served by waypoint shop/waypoint: no Service"),
        (
            "http://optout.shop/",
            "Service shop/optout opts out (istio.io/use-waypoint: none)",
        ),
        (
            "http://byother.shop/",
            "istio.io/WaypointBound=True (WaypointAccepted): bound to waypoint shop/other",
        ),
        ("http://ghostly.shop/", "istio.io/WaypointBound=False (WaypointNotFound)"),
        (
            "http://lonely.elsewhere/",
            "neither Service elsewhere/lonely nor Namespace elsewhere has an "
            "istio.io/use-waypoint label",
        ),
    ],
)
def test_errors_name_the_problem(
    world: pathlib.Path, capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    code, out, err = _run(capsys, "-f", str(world), url)
    assert (code, out) == (1, "")
    assert message in err


def test_unknown_waypoint(world: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "-f", str(world), "http://api.shop/", waypoint="shop/nope")
    assert code == 1
    assert "no waypoint Gateway shop/nope" in err


def test_bad_arguments(world: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "-f", str(world), "-H", "no-colon", "http://api.shop/")
    assert code == 2
    assert "header must be 'NAME: VALUE'" in err
    with pytest.raises(SystemExit):
        _run(capsys, "-f", str(world), "--from", "shop", "http://api.shop/")
    assert "--from must be NAMESPACE/SERVICEACCOUNT" in capsys.readouterr().err


def test_policies_of_the_route_are_listed(
    world: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "-f", str(world), "http://api.shop/slow")
    assert code == 0
    assert "  timeout 5s" in out.splitlines()
    assert (
        "  retry: 2 retries on connect-failure,refused-stream,reset,retriable-status-codes" in out
    )
    assert "from an unspecified client (consumer routes cannot match)" in out


def test_default_route_and_plain_endpoint(
    world: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "-f", str(world), "http://old.legacy.svc.cluster.local/")
    assert code == 0
    lines = out.splitlines()
    assert "  the default route of legacy/old:80 (no route attached)" in lines
    assert "    endpoint 10.2.0.1:8080 (plain)" in lines

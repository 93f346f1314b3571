"""CLI: ``waypoint render``, ``waypoint up --once`` and ``waypoint request`` on the example world."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from tests import conftest
from waypoint import cli, pipeline
from waypoint.commands import up
from waypoint.local import stack as stack_mod
from waypoint.runtime import envoy_process

FREE_PORTS = [
    "--hbone-port", "0", "--admin-port", "0", "--readiness-port", "0",
    "--stats-port", "0", "--upstream-hbone-port", "0",
]  # fmt: skip


def test_render_example_validates(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "envoy.yaml"
    code = cli.main(
        ["render", "-f", str(up.EXAMPLE), "--waypoint", "demo/waypoint", "-o", str(out),
         "--cert-dir", str(tmp_path / "certs")]
    )  # fmt: skip
    assert code == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"envoy.yaml", "cert.yaml", "root.yaml"}
    envoy_process.validate(out)
    config = yaml.safe_load(out.read_text())
    listeners = {item["name"] for item in config["static_resources"]["listeners"]}
    assert "connect_terminate" in listeners
    assert "inbound-vip|80|echo.demo.svc.cluster.local" in listeners


def test_render_is_deterministic(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "render",
        "-f",
        str(up.EXAMPLE),
        "--waypoint",
        "demo/waypoint",
        "--sds-dir",
        str(tmp_path),
    ]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first


def test_render_reports_bad_objects_and_renders_the_rest(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "broken", "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo-v1"}],
            "rules": [{"filters": [{"type": "ExtensionRef", "extensionRef": {"name": "x"}}]}],
        },
    }
    extra = tmp_path / "bad.yaml"
    extra.write_text(yaml.safe_dump(bad_route))
    args = ["render", "-f", str(up.EXAMPLE), "-f", str(extra), "--waypoint", "demo/waypoint",
            "--sds-dir", str(tmp_path)]  # fmt: skip
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "HTTPRoute.gateway.networking.k8s.io/demo/broken" in captured.err
    assert "connect_terminate" in captured.out
    assert cli.main([*args, "--strict"]) == 1


def test_render_errors_are_clear(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["render", "-f", str(up.EXAMPLE), "--waypoint", "demo/nope"]) == 1
    assert "demo/nope" in capsys.readouterr().err
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("kind: [unclosed\n")
    assert cli.main(["render", "-f", str(garbage), "--waypoint", "demo/waypoint"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["render", "-f", str(up.EXAMPLE), "--waypoint", "no-slash"])


def _own_addresses(tmp_path: pathlib.Path) -> pathlib.Path:
    """The example world on loopback addresses of its own, so a running `waypoint up` or load
    test on this machine cannot collide with the test."""
    world = tmp_path / "world"
    world.mkdir()
    for source in up.EXAMPLE.glob("*.yaml"):
        (world / source.name).write_text(source.read_text().replace("127.0.10.", "127.0.13."))
    return world


def test_up_once_runs_the_demo(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up", "--once", "-f", str(_own_addresses(tmp_path)), *FREE_PORTS]) == 0
    out = capsys.readouterr().out
    assert "answered by echo-v2-7b6c5d4f8-m4n9p (demo)" in out  # the header match
    assert "backend saw /v1/api/orders, x-routed-by=waypoint" in out  # rewrite + header set
    assert "location: http://echo.demo/new/page" in out  # the redirect
    assert "spiffe://cluster.local/ns/demo/sa/waypoint" in out
    assert "✗" not in out
    assert "← 403 Forbidden" in out  # the Rego deny for role viewer
    assert "x-jwt-role=admin" in out  # claim_to_headers on the allowed admin request
    # The expired token: Envoy's jwt_authn (the RequestAuthentication) answers, before extauthz.
    assert (
        'www-authenticate: Bearer realm="http://echo-v1.demo/admin", error="invalid_token"' in out
    )


def test_request_command_through_a_running_waypoint(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = pipeline.load_objects([_own_addresses(tmp_path)])
    with stack_mod.LocalStack(objects, "demo", "waypoint", rego_modules=[up.EXAMPLE_REGO]) as local:
        local.identity("demo", "sleep").write(tmp_path / "client")
        hbone = f"127.0.0.1:{local.options.hbone_port}"
        base = ["request", "--waypoint", hbone, "--cert-dir", str(tmp_path / "client")]
        code = cli.main(
            [*base, "-i", "-H", "x-version: v2", f"http://{local.vip('demo', 'echo')}/x"]
        )
        out = capsys.readouterr().out
        assert code == 0
        assert out.startswith("HTTP/1.1 200")
        assert "Hostname=echo-v2-7b6c5d4f8-m4n9p" in out
        assert cli.main([*base, "http://10.1.2.3/"]) == 1
        assert "refused the tunnel" in capsys.readouterr().err
    assert cli.main(["request", "--cert-dir", str(conftest.REPO / "nope"), "http://x/"]) == 2


def test_render_kubernetes_objects_validate(capsys: pytest.CaptureFixture[str]) -> None:
    import kubernetes_validate

    assert cli.main(["render", "--kubernetes", "-f", str(up.EXAMPLE / "world.yaml")]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = [d["kind"] for d in docs]
    assert kinds == [
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler"
    ]  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, "1.32", strict=True)
    config_map = docs[1]
    assert "connect_terminate" in config_map["data"]["envoy.yaml"]
    assert cli.main(["render", "--kubernetes", "-f", str(up.EXAMPLE), "--waypoint", "x/y"]) == 1
    assert "no waypoint Gateway" in capsys.readouterr().err


def test_render_xds_bootstrap(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from waypoint.envoy import options
    from waypoint.xds import bootstrap as xds_bootstrap

    args = ["render", "--xds", "127.0.0.1:18000", "--waypoint", "demo/waypoint", "--xds-delta"]
    assert cli.main([*args, "--admin-port", "19999"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    expected = xds_bootstrap.build(
        "127.0.0.1:18000",
        "demo",
        "waypoint",
        options.BootstrapOptions(admin_port=19999),
        delta=True,
    )
    assert config["node"] == expected["node"]
    assert config["dynamic_resources"] == expected["dynamic_resources"]
    out = tmp_path / "xds.yaml"
    out.write_text(yaml.safe_dump(config))
    envoy_process.validate(out)
    assert cli.main(["render", "--xds", "nope", "--waypoint", "demo/waypoint"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err

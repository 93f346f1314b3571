"""CLI: ``waypoint render``, ``waypoint up --once`` and ``waypoint request`` on the example world."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from tests import conftest
from waypoint import cli, pki
from waypoint.commands import up
from waypoint.envoy import options
from waypoint.local import stack as stack_mod
from waypoint.runtime import envoy_process, inputs
from waypoint.xds import bootstrap as xds_bootstrap

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
    return conftest.own_world(tmp_path, 13)


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
    # --once stops the waypoint and drops its temp dir: no instructions that point at them.
    assert "Send traffic" not in out
    assert "9 of 9 demo requests behaved as expected" in out
    assert "up` without --once" in out


def test_up_prints_commands_that_run_as_printed(tmp_path: pathlib.Path) -> None:
    """The usage lines `waypoint up` prints run in the Quick-start shell (no venv activated)."""
    objects = inputs.load_objects([_own_addresses(tmp_path)])
    with stack_mod.LocalStack(objects, "demo", "waypoint", rego_modules=[up.EXAMPLE_REGO]) as local:
        text = io.StringIO()
        up.show(local, text)
        lines = text.getvalue().split("Send traffic as a mesh client")[1].splitlines()[1:]
        script = "set -e\n" + "\n".join(line.strip() for line in lines if line.strip())
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # as in a fresh shell: the venv not active
        done = subprocess.run(
            ["bash", "-c", script], cwd=conftest.REPO, env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, (script, done.stderr)
    assert "x-jwt-role" in done.stdout or "Hostname=" in done.stdout


def test_request_command_through_a_running_waypoint(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = inputs.load_objects([_own_addresses(tmp_path)])
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
        # A Service name resolves through the world to its ClusterIP, as in `explain`.
        (tmp_path / "names").mkdir()
        world = str(_own_addresses(tmp_path / "names"))
        assert cli.main([*base, "-f", world, "-H", "x-version: v2", "http://echo.demo/x"]) == 0
        assert "Hostname=echo-v2-7b6c5d4f8-m4n9p" in capsys.readouterr().out
        assert cli.main([*base, "-f", world, "http://nope.demo/"]) == 2
        assert "no Service demo/nope in the input" in capsys.readouterr().err
    assert cli.main(["request", "--cert-dir", str(conftest.REPO / "nope"), "http://x/"]) == 2


def test_render_kubernetes_objects_validate(capsys: pytest.CaptureFixture[str]) -> None:
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


def test_render_to_stdout_writes_nothing(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    args = [
        "render",
        "-f",
        str(up.EXAMPLE),
        "--waypoint",
        "demo/waypoint",
        "--cert-dir",
        str(certs),
    ]
    assert cli.main(args) == 0
    assert list(tmp_path.iterdir()) == []  # no <cert-dir>-sds, nothing at all
    out, err = capsys.readouterr()
    assert "static_resources" in out
    assert "nothing was written" in err
    assert "--sds-dir" in err


def test_a_plain_install_runs_up_from_any_directory(tmp_path: pathlib.Path) -> None:
    """The example world, the demo Rego and the demo key are package data, not repo files."""
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(conftest.REPO)],
        check=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = wheels.glob("waypoint_mesh-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy, not the checkout

    def run(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, *argv], cwd=elsewhere, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = run("-c", "from waypoint.commands import up; print(up.EXAMPLE, up.EXAMPLE_REGO)")
    assert all(pathlib.Path(p).is_relative_to(target) for p in where.split())
    assert run("-m", "extauthz", "token", "--demo", "--claim", "role=admin").count(".") == 2
    world = conftest.own_world(elsewhere, 14, target / "waypoint" / "local" / "example")
    out = run("-m", "waypoint", "up", "--once", "-f", str(world), *FREE_PORTS)
    assert "9 of 9 demo requests behaved as expected" in out


def test_render_picks_the_only_gateway(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "envoy.yaml"
    assert cli.main(["render", "-f", str(up.EXAMPLE), "-o", str(out)]) == 0
    assert "connect_terminate" in out.read_text()
    two = tmp_path / "two.yaml"
    gateway = yaml.safe_load_all((up.EXAMPLE / "world.yaml").read_text())
    (first,) = [o for o in gateway if o and o.get("kind") == "Gateway"]
    second = {**first, "metadata": {**first["metadata"], "name": "other"}}
    two.write_text(yaml.safe_dump_all([first, second]))
    assert cli.main(["render", "-f", str(two)]) == 2
    assert "found: demo/other, demo/waypoint" in capsys.readouterr().err


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """Docstrings become --help text without reStructuredText markup."""
    for command in ("up", "render", "request", "explain", "serve"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "``" not in text, command
        assert ":mod:" not in text, command
        assert ":func:" not in text, command


def test_kubernetes_yaml_has_no_anchors(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # With the extauthz sidecar, objects share dicts: plain safe_dump wrote &id001 anchors.
    rego = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "waypoint-extauthz-policy", "namespace": "demo"},
        "data": {"policy.rego": "package envoy.authz\ndefault allow := false\n"},
    }  # fmt: skip
    (tmp_path / "rego.yaml").write_text(yaml.safe_dump(rego))
    argv = ["render", "--kubernetes", "-f", str(up.EXAMPLE), "-f", str(tmp_path / "rego.yaml")]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "&id" not in text
    assert "*id" not in text


def test_certs_writes_a_ca_the_waypoint_and_clients(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = tmp_path / "certs"
    assert cli.main(["certs", "--dir", str(where), "--client", "apps/web"]) == 0
    waypoint = pki.load_identity(where)
    assert waypoint.verify() == "spiffe://cluster.local/ns/demo/sa/waypoint"
    client = pki.load_identity(where / "clients" / "apps.web")
    assert client.verify() == "spiffe://cluster.local/ns/apps/sa/web"
    # Again: the same CA issues fresh certificates, so a running Envoy keeps trusting them.
    assert cli.main(["certs", "--dir", str(where)]) == 0
    again = pki.load_identity(where)
    assert again.root_pem == waypoint.root_pem
    assert again.certificate.serial_number != waypoint.certificate.serial_number
    assert cli.main(["certs", "--dir", str(where), "--trust-domain", "other.example"]) == 1
    assert "holds a CA for trust domain 'cluster.local'" in capsys.readouterr().err

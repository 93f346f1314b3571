"""``waypoint proxy-config`` against a running waypoint Envoy's admin API (a real Envoy)."""

from __future__ import annotations

import json
import os
import pathlib
import stat
from collections.abc import Iterator

import pytest
import yaml

from tests import conftest
from waypoint import cli
from waypoint.commands import up
from waypoint.local import stack as stack_mod
from waypoint.runtime import inputs


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_mod.LocalStack]:
    objects = inputs.load_objects([conftest.own_world(tmp_path_factory.mktemp("proxy"), 15)])
    with stack_mod.LocalStack(objects, "demo", "waypoint", rego_modules=[up.EXAMPLE_REGO]) as local:
        yield local


def _show(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(["proxy-config", *argv]) == 0
    return capsys.readouterr().out


def test_tables(running: stack_mod.LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    admin = f"127.0.0.1:{running.options.admin_port}"
    listeners = _show(capsys, "listeners", "--admin", admin)
    assert listeners.splitlines()[0].split() == ["NAME", "ADDRESS", "CHAINS", "FROM"]
    (hbone,) = [line for line in listeners.splitlines() if line.startswith("connect_terminate")]
    assert f":{running.options.hbone_port}" in hbone
    assert "inbound-vip|80|echo.demo.svc.cluster.local" in listeners
    routes = _show(capsys, "routes", "--admin", admin)
    split = [line for line in routes.splitlines() if "httproute/demo/echo/3/0" in line]
    assert len(split) == 1  # shown once, under its listener, though Envoy lists it twice
    assert "(80), outbound|80||echo-v2.demo.svc.cluster.local (20)" in split[0]
    assert "CONNECT +headers :authority" in routes
    clusters = _show(capsys, "clusters", "--admin", admin)
    assert "outbound|80||echo.demo.svc.cluster.local" in clusters
    endpoints = _show(capsys, "endpoints", "--admin", admin)
    assert "internal:connect_originate|demo|echo" in endpoints
    secrets = _show(capsys, "secrets", "--admin", admin)
    certs = [line for line in secrets.splitlines() if "spiffe://" in line]
    assert len(certs) == 1  # deduplicated across the TLS contexts that use it
    assert "spiffe://cluster.local/ns/demo/sa/waypoint" in certs[0]


def test_raw_output(running: stack_mod.LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    admin = f"127.0.0.1:{running.options.admin_port}"
    data = json.loads(_show(capsys, "clusters", "--admin", admin, "-o", "json"))
    assert data["clusters"]["@type"].endswith("ClustersConfigDump")
    everything = yaml.safe_load(_show(capsys, "all", "--admin", admin, "-o", "yaml"))
    assert set(everything) == {"listeners", "routes", "clusters", "endpoints", "secrets"}


def test_pod_through_kubectl_port_forward(
    running: stack_mod.LocalStack,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--pod runs `kubectl -n NS port-forward pod/POD :15000` and reads the port it prints.

    A stand-in kubectl prints kubectl's own first line for the running Envoy's admin port,
    then waits to be stopped, as kubectl does; it records its arguments.
    """
    seen = tmp_path / "argv"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" > {seen}\n'
        f'echo "Forwarding from 127.0.0.1:{running.options.admin_port} -> 15000"\n'
        "exec sleep 60\n"
    )
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert "connect_terminate" in _show(capsys, "listeners", "--pod", "demo/waypoint-abc")
    assert seen.read_text().split() == ["-n", "demo", "port-forward", "pod/waypoint-abc", ":15000"]


def test_errors_are_clear(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["proxy-config", "listeners", "--admin", "127.0.0.1:1"]) == 1
    assert "cannot read http://127.0.0.1:1/config_dump" in capsys.readouterr().err

"""Shared fixtures: free ports and a real Envoy that is always torn down."""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests import golden
from waypoint.commands import up
from waypoint.envoy import options as envoy_options
from waypoint.runtime import envoy_process, ports

pytest_plugins = ["tests.fakekube.fixtures"]

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
# The GAMMA conformance data (cases.json and manifests/) is read where it lies, never copied in.
GAMMA_ENV = "WAYPOINT_CONFORMANCE_DIR"
GAMMA = pathlib.Path(os.environ.get(GAMMA_ENV) or SHARED / "conformance" / "gamma")


def gamma_missing(what: pathlib.Path) -> str | None:
    """Why the conformance replay cannot run (``what`` is absent), or None when it can."""
    if what.exists():
        return None
    return (
        f"GAMMA conformance data not found: {what} does not exist. Set {GAMMA_ENV} to the "
        "directory holding cases.json and manifests/ (in this project: ../shared/conformance/gamma)"
    )


def own_world(
    directory: pathlib.Path, subnet: int, source: pathlib.Path | None = None
) -> pathlib.Path:
    """A copy of the example world (``source``, default the packaged one) in ``directory``/world
    on loopback addresses 127.0.<subnet>.x of its own, so a test never collides with a running
    ``waypoint up`` (127.0.10.x) or another test."""
    example = source or up.EXAMPLE
    world = directory / "world"
    world.mkdir()
    for file in example.glob("*.yaml"):
        (world / file.name).write_text(file.read_text().replace("127.0.10.", f"127.0.{subnet}."))
    return world


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON access-log lines of ``text``, without one Envoy is still writing: a log read
    while Envoy writes may end in half a line, which the next read completes."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def wait_for(predicate: Callable[[], bool], what: str, patience: float = 30.0) -> None:
    """Wait until ``predicate`` holds; fail naming ``what`` after ``patience`` seconds (a
    deadline for progress on a busy machine, not a speed check)."""
    deadline = time.monotonic() + patience
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    return ports.free_port()


def loopback_options(**fields: Any) -> envoy_options.BootstrapOptions:
    """Bootstrap options for a test Envoy on loopback: admin, readiness and stats each on a
    free port; ``fields`` set the rest (trust domain, cert dir, listener ports...)."""
    defaults: dict[str, Any] = {
        "bind": "127.0.0.1",
        "admin_port": free_port(),
        "readiness_port": free_port(),
        "stats_port": free_port(),
    }
    return envoy_options.BootstrapOptions(**{**defaults, **fields})


@pytest.fixture
def port_factory() -> Callable[[], int]:
    return free_port


EnvoyStarter = Callable[[dict[str, object] | str, int], envoy_process.EnvoyProcess]


@pytest.fixture
def envoy(tmp_path: pathlib.Path) -> Iterator[EnvoyStarter]:
    """Start real Envoys on a config (dict or YAML text) with the given admin port.

    Waits until ``/ready`` answers LIVE; every Envoy started is stopped at teardown,
    and its log is attached to the failure report.
    """
    started: list[envoy_process.EnvoyProcess] = []

    def start(config: dict[str, object] | str, admin_port: int) -> envoy_process.EnvoyProcess:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        path = tmp_path / f"envoy-{len(started)}.yaml"
        path.write_text(text)
        proc = envoy_process.start(path, admin_port, tmp_path / f"envoy-{len(started)}.log")
        started.append(proc)
        proc.wait_ready()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="rewrite golden files from current output"
    )


def pytest_configure(config: pytest.Config) -> None:
    golden.UPDATE = bool(config.getoption("--update-golden"))

"""Children of load tests and Envoy runs die with the process that started them.

A benchmark killed with SIGKILL runs no cleanup, so its Envoys and helper servers would run
on. Here a real parent process starts a child through the real spawn points
(:func:`loadtests.procs.spawn`, :func:`waypoint.runtime.envoy_process.start`), reports the
child's pid, and is SIGKILLed; the child must then be gone (or a zombie awaiting its new
parent's reaping). The waits are bounded polls for an outcome, not timing assertions.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests import conftest

pytestmark = pytest.mark.skipif(
    shutil.which("setpriv") is None, reason="needs util-linux's setpriv (Linux only)"
)

# Each parent prints its child's pid once the child is running, then waits to be killed.
SPAWN_PARENT = """
import pathlib, sys, time
from loadtests import procs
child = procs.spawn("sleeper", ["sleep", "60"], pathlib.Path(sys.argv[1]) / "sleeper.log")
print(child.pid, flush=True)
time.sleep(60)
"""

ENVOY_PARENT = """
import pathlib, sys, time
from loadtests import procs
from waypoint.runtime import envoy_process
work, admin = pathlib.Path(sys.argv[1]), procs.free_port()
config = work / "envoy.yaml"
config.write_text(
    "admin: {address: {socket_address: {address: 127.0.0.1, port_value: %d}}}\\n" % admin
)
proxy = envoy_process.start(config, admin, work / "envoy.log")
proxy.wait_ready()
print(proxy.process.pid, flush=True)
time.sleep(60)
"""


def _state(pid: int) -> str | None:
    """The process's state letter from /proc (R, S, Z, ...), None when it is gone."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2]


def _command(pid: int) -> str:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.index("(") + 1 : stat.rindex(")")]


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def _wait_exec(pid: int, command: str, seconds: float = 10.0) -> bool:
    """Whether the child runs ``command`` (it starts as setpriv, which then execs it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _alive(pid) and _command(pid).startswith(command):
            return True
        time.sleep(0.05)
    return False


def _wait_dead(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("script", "command"),
    [(SPAWN_PARENT, "sleep"), (ENVOY_PARENT, "envoy")],
    ids=["spawn", "envoy"],
)
def test_child_dies_when_its_parent_is_sigkilled(
    tmp_path: pathlib.Path, script: str, command: str
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=conftest.REPO,
    )
    child_pid = 0
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"parent printed {line!r}, exit {parent.poll()}"
        child_pid = int(line)
        assert _alive(child_pid)
        assert _wait_exec(child_pid, command), f"{child_pid} never became {command}"
        parent.kill()
        parent.wait(10)
        assert _wait_dead(child_pid), f"{command} {child_pid} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if child_pid and _alive(child_pid) and _command(child_pid).startswith(command):
            os.kill(child_pid, signal.SIGKILL)

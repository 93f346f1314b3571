"""Child processes of a load test: start them, wait until they serve, and meter their CPU/RSS.

The harness measures the CPU seconds Envoy and extauthz spend per 1,000 requests, so every
measured component runs as its own process. ``psutil`` is used when installed; otherwise the
numbers come straight from ``/proc/<pid>/stat`` and ``/proc/<pid>/status`` (Linux).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

from waypoint.runtime import envoy_process, ports

try:
    import psutil  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # pragma: no cover - psutil is optional
    psutil = None

PYTHON = sys.executable


class ProcessError(RuntimeError):
    """A child process exited early or never became ready."""


@dataclasses.dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system) and resident memory of one process at one instant."""

    cpu_seconds: float
    rss_bytes: int


def usage(pid: int) -> Usage:
    """The process's CPU time so far and its current RSS."""
    if psutil is not None:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            return Usage(times.user + times.system, proc.memory_info().rss)
    return _proc_usage(pid)


def _proc_usage(pid: int) -> Usage:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; fields after the last ")" are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    rss_pages = int(fields[21])
    return Usage(cpu, rss_pages * os.sysconf("SC_PAGE_SIZE"))


def envoy_counter(proxy: envoy_process.EnvoyProcess, name: str) -> int:
    """One counter of one Envoy's admin /stats (0 until first used).

    hey leaves failed requests out of its CSV, so the benches compare what it recorded with
    what the Envoys counted; counters are read at once, not at a stats flush.
    """
    pattern = urllib.parse.quote(f"^{re.escape(name)}$")
    text = proxy.admin_get(f"/stats?usedonly&filter={pattern}")
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


free_port = ports.free_port
free_ports = ports.free_ports
bindable = ports.bindable


def extauthz_ready(metrics_port: int) -> bool:
    """Whether the extauthz serving metrics on ``metrics_port`` says it is ready (/readyz)."""
    try:
        url = f"http://127.0.0.1:{metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=0.5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


@dataclasses.dataclass
class Child:
    """A named child process whose output goes to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def usage(self) -> Usage:
        return usage(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ProcessError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def wait_until(self, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll ``ready`` until true; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if ready():
                return
            time.sleep(0.05)
        raise ProcessError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        envoy_process.terminate(self.process, timeout)


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: pathlib.Path,
    env: dict[str, str] | None = None,
    cwd: pathlib.Path | None = None,
) -> Child:
    """Start ``argv`` with stdout and stderr going to ``log_path``; it dies with this process.

    Call it from the main thread or one that outlives the child (see
    :func:`waypoint.runtime.envoy_process.die_with_parent`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as sink:
        proc = subprocess.Popen(
            [*envoy_process.die_with_parent(), *argv],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
    return Child(name, proc, log_path)

"""Serve from several processes on one port: ``extauthz serve --workers N``.

One Python process runs one event loop, so one extauthz uses at most about one core.
With ``--workers N`` a supervisor starts N ``extauthz serve`` worker processes that all
bind the same TCP port with SO_REUSEPORT; the kernel spreads Envoy's connections across
them. The supervisor forwards SIGTERM/SIGINT (each worker drains its in-flight checks).
A worker that dies is restarted with exponential backoff (0.5 s doubling to 30 s), and
the death is logged; the restarted worker is told how many restarts its slot has had and
exports it as ``extauthz_worker_restarts``. A worker that keeps dying within seconds of
starting (a port taken, a broken policy file) is not hidden behind endless restarts:
after five such deaths in a row the pool stops with its exit code, so a process manager
sees the failure. The same supervision (``Pool``) keeps ``waypoint up``'s extauthz
sidecar running as a child process.

A unix socket or port 0 cannot be shared this way and is refused. Worker ``i`` serves
its metrics and probes on the metrics port plus ``i``, so each worker's counters stay
scrapeable and none of them is hidden behind another's.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

from extauthz import config

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
_FIRST_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 30.0
_STABLE_SECONDS = 10.0  # a worker that lived this long died of something new
_MAX_QUICK_DEATHS = 5


def check_shareable(settings: config.Settings, listen: str | None, workers: int) -> None:
    """Refuse what several processes cannot share; the error names the key."""
    if workers < 1:
        raise config.ConfigError(f"--workers: must be at least 1, got {workers}")
    if workers == 1:
        return
    key = "--listen" if listen else "listen"
    address = listen or settings.listen
    parsed = config.parse_listen(address, key)
    if isinstance(parsed, pathlib.Path):
        raise config.ConfigError(f"{key}: --workers needs a TCP host:port, got {address!r}")
    if parsed[1] == 0:
        raise config.ConfigError(f"{key}: --workers needs a fixed port, not 0")
    if settings.metrics_listen is not None:
        _host, port = config.host_port(settings.metrics_listen, "metrics_listen")
        if port == 0 or port + workers - 1 > 65535:
            raise config.ConfigError(
                f"metrics_listen: --workers {workers} needs ports {port}..{port + workers - 1}"
            )


def worker_settings(settings: config.Settings, index: int) -> config.Settings:
    """The settings of worker ``index``: a shared port, its own metrics port."""
    metrics_listen = settings.metrics_listen
    if metrics_listen is not None:
        host, port = config.host_port(metrics_listen, "metrics_listen")
        shown = f"[{host}]" if ":" in host else host
        metrics_listen = f"{shown}:{port + index}"
    return dataclasses.replace(settings, reuse_port=True, metrics_listen=metrics_listen)


def worker_argv(
    config_path: pathlib.Path, listen: str | None, log_level: str, index: int, restarts: int = 0
) -> list[str]:
    """The command line of worker ``index``, started for the ``restarts``-th time after the first."""
    argv = [sys.executable, "-m", "extauthz.cli", "serve", "--config", str(config_path)]
    if listen:
        argv += ["--listen", listen]
    argv += ["--log-level", log_level, "--worker-index", str(index)]
    return [*argv, "--worker-restarts", str(restarts)] if restarts else argv


Spawn = Callable[[int, int], "subprocess.Popen[bytes]"]
"""Start worker ``index`` for the ``restarts``-th restart (0: its first start)."""


@dataclasses.dataclass
class _Slot:
    """One worker position: its current process, or when it is due to be restarted."""

    index: int
    child: subprocess.Popen[bytes] | None
    started: float
    restarts: int = 0
    quick_deaths: int = 0  # deaths in a row, each within _STABLE_SECONDS of its start
    due: float = 0.0


class Pool:
    """Child processes, each restarted with backoff when it dies; ``tend`` does the rounds.

    ``supervise`` drives one for ``extauthz serve --workers``; ``waypoint up`` drives one
    from a thread to keep its extauthz sidecar running (``waypoint/local/sidecar.py``).
    """

    def __init__(
        self, spawn: Spawn, count: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._spawn = spawn
        self._clock = clock
        now = clock()
        self._slots = [_Slot(i, spawn(i, 0), now) for i in range(count)]

    @property
    def restarts(self) -> int:
        """How many times a child was restarted, over all slots."""
        return sum(slot.restarts for slot in self._slots)

    @property
    def pids(self) -> list[int | None]:
        """Each slot's running child (None while it waits for its restart)."""
        return [None if slot.child is None else slot.child.pid for slot in self._slots]

    def tend(self) -> int | None:
        """Restart the dead when due; an exit code once one keeps dying (the pool stopped)."""
        for slot in self._slots:
            failed = _tend(slot, self._spawn, self._clock())
            if failed is not None:
                self.stop()
                return failed
        return None

    def signal(self, signum: int) -> None:
        """Forward ``signum`` to every running child."""
        for slot in self._slots:
            if slot.child is not None and slot.child.poll() is None:
                slot.child.send_signal(signum)

    def wait(self) -> int:
        """Wait for every child to exit; the highest exit code."""
        codes = [slot.child.wait() for slot in self._slots if slot.child is not None]
        return max((abs(code) for code in codes), default=0)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every child (they drain), wait up to ``grace`` seconds, then SIGKILL."""
        self.signal(signal.SIGTERM)
        for slot in self._slots:
            if slot.child is not None:
                try:
                    slot.child.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    slot.child.kill()
                    slot.child.wait()
            slot.child = None

    def kill(self) -> None:
        """SIGKILL whatever still runs."""
        for slot in self._slots:
            if slot.child is not None and slot.child.poll() is None:
                slot.child.kill()
                slot.child.wait()


def supervise(
    spawn: Spawn,
    count: int,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run ``count`` workers until a signal; restart the ones that die; return the exit code."""
    pool = Pool(spawn, count, clock=clock)
    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        pool.signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping:
            failed = pool.tend()
            if failed is not None:
                return failed
            sleep(POLL_SECONDS)
        return pool.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        pool.kill()


def _tend(slot: _Slot, spawn: Spawn, now: float) -> int | None:
    """Restart a dead worker when due; an exit code when it keeps dying and we give up."""
    if slot.child is None:
        if now >= slot.due:
            slot.child, slot.started = spawn(slot.index, slot.restarts), now
        return None
    code = slot.child.poll()
    if code is None:
        return None
    quick = now - slot.started < _STABLE_SECONDS
    slot.quick_deaths = slot.quick_deaths + 1 if quick else 1
    if slot.quick_deaths >= _MAX_QUICK_DEATHS:
        log.error(
            "extauthz worker %d died %d times in a row within %ss of starting (last exit %s);"
            " stopping the pool",
            slot.index,
            slot.quick_deaths,
            _STABLE_SECONDS,
            code,
        )
        return abs(code) or 1
    delay = min(_MAX_BACKOFF_SECONDS, _FIRST_BACKOFF_SECONDS * 2 ** (slot.quick_deaths - 1))
    slot.restarts += 1
    slot.child, slot.due = None, now + delay
    log.warning(
        "extauthz worker %d exited with %s; restart %d in %.1fs",
        slot.index,
        code,
        slot.restarts,
        delay,
    )
    return None

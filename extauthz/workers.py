"""Serve from several processes on one port: ``extauthz serve --workers N``.

One Python process runs one event loop, so one extauthz uses at most about one core.
With ``--workers N`` a supervisor starts N ``extauthz serve`` worker processes that all
bind the same TCP port with SO_REUSEPORT; the kernel spreads Envoy's connections across
them. The supervisor forwards SIGTERM/SIGINT (each worker drains its in-flight checks),
and if one worker dies the others are stopped and its exit code is returned, so a
process manager sees the failure instead of a silently smaller pool.

A unix socket or port 0 cannot be shared this way and is refused. Worker ``i`` serves
its metrics and probes on the metrics port plus ``i``, so each worker's counters stay
scrapeable and none of them is hidden behind another's.
"""

from __future__ import annotations

import dataclasses
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

from extauthz import config

_POLL_SECONDS = 0.2


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
    config_path: pathlib.Path, listen: str | None, log_level: str, index: int
) -> list[str]:
    """The command line of worker ``index``."""
    argv = [sys.executable, "-m", "extauthz.cli", "serve", "--config", str(config_path)]
    if listen:
        argv += ["--listen", listen]
    return [*argv, "--log-level", log_level, "--worker-index", str(index)]


def supervise(commands: Sequence[Sequence[str]]) -> int:
    """Run the workers until a signal or a worker's exit; return the exit code."""
    children = [subprocess.Popen(list(argv)) for argv in commands]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _wait(children, lambda: stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def _wait(children: list[subprocess.Popen[bytes]], stopping: Callable[[], bool]) -> int:
    while True:
        codes = [child.poll() for child in children]
        exited = [code for code in codes if code is not None]
        if len(exited) == len(children):
            return max(abs(code) for code in exited)
        if exited and not stopping():
            # One worker is gone: stop the rest, so the failure is not hidden.
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                child.wait()
            return abs(exited[0]) or 1
        time.sleep(_POLL_SECONDS)

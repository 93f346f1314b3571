"""``extauthz serve --workers N``: N real processes on one port, a supervisor over them.

Covers the refusals (unix socket, port 0, a bad count), each worker's own metrics port,
checks answered through the shared port, SIGTERM stopping every worker with exit 0, a
dead worker restarted (and its restart counted), and, on a fake clock, the backoff and
the pool giving up on a worker that keeps dying at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pathlib
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from extauthz import cli, config, workers
from loadtests import procs
from tests import conftest
from tests.extauthz import support
from waypoint.runtime import ports


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def _children(pid: int) -> list[int]:
    text = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


@pytest.mark.parametrize(
    ("listen", "count", "message"),
    [
        ("unix:/tmp/extauthz-w.sock", 2, "--listen: --workers needs a TCP host:port"),
        ("127.0.0.1:0", 2, "--listen: --workers needs a fixed port"),
        ("127.0.0.1:9000", 0, "--workers: must be at least 1"),
    ],
)
def test_refuses_what_workers_cannot_share(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    listen: str,
    count: int,
    message: str,
) -> None:
    path = support.write_config(tmp_path, support.base_config(tmp_path))
    argv = ["serve", "--config", str(path), "--listen", listen, "--workers", str(count)]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_metrics_port_zero_is_refused(tmp_path: pathlib.Path) -> None:
    settings = support.settings(tmp_path, listen="127.0.0.1:9000")
    with pytest.raises(config.ConfigError, match=r"^metrics_listen: --workers 2 needs ports"):
        workers.check_shareable(settings, None, 2)


def test_worker_settings_share_the_port_and_split_metrics(tmp_path: pathlib.Path) -> None:
    settings = support.settings(tmp_path, metrics_listen="[::1]:9464")
    second = workers.worker_settings(settings, 1)
    assert second.reuse_port
    assert second.metrics_listen == "[::1]:9465"
    assert second.listen == settings.listen
    assert second.jwt == settings.jwt


@contextlib.asynccontextmanager
async def pool(tmp_path: pathlib.Path, count: int) -> AsyncIterator[tuple[int, int, object]]:
    port, metrics_port = conftest.free_port(), ports.free_ports(2)
    doc = support.base_config(tmp_path, metrics_listen=f"127.0.0.1:{metrics_port}")
    path = support.write_config(tmp_path, doc)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "extauthz.cli", "serve", "--config", str(path)),
        *("--listen", f"127.0.0.1:{port}", "--workers", str(count), "--log-level", "WARNING"),
        env={**os.environ, "PYTHONPATH": str(conftest.REPO)},
    )
    try:
        for _ in range(300):
            if all(procs.extauthz_ready(metrics_port + i) for i in range(count)):
                break
            assert process.returncode is None, "the supervisor exited during startup"
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the workers never became ready")
        yield port, metrics_port, process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.asyncio
async def test_workers_serve_one_port_and_stop_on_sigterm(tmp_path: pathlib.Path) -> None:
    async with pool(tmp_path, 2) as (port, _metrics_port, process):
        assert isinstance(process, asyncio.subprocess.Process)
        assert len(_children(process.pid)) == 2
        for _ in range(4):
            # A fresh channel per check: new connections are what the kernel spreads.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                answer = await stub.Check(support.check_request("/public"), timeout=10)
                assert answer.status.code == 0
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    with socket.socket() as probe:
        # SO_REUSEADDR lets the bind past connections the workers left in TIME_WAIT (a loaded
        # machine leaves some), but not past a socket still listening: no worker holds the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


@pytest.mark.asyncio
async def test_a_dead_worker_is_restarted_and_counted(tmp_path: pathlib.Path) -> None:
    async with pool(tmp_path, 2) as (port, metrics_port, process):
        assert isinstance(process, asyncio.subprocess.Process)
        first, second = _children(process.pid)
        os.kill(first, signal.SIGKILL)
        for _ in range(300):
            children = _children(process.pid)
            ready = all(procs.extauthz_ready(metrics_port + i) for i in range(2))
            if len(children) == 2 and first not in children and ready:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the dead worker was not restarted")
        assert second in children  # the other worker was left alone
        texts = [_metrics(metrics_port + i) for i in range(2)]
        assert sorted(t.count("extauthz_worker_restarts 1.0") for t in texts) == [0, 1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            answer = await stub.Check(support.check_request("/public"), timeout=10)
            assert answer.status.code == 0
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


class FakeChild:
    """A worker process whose exit the test decides."""

    def __init__(self) -> None:
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code

    def wait(self, timeout: float | None = None) -> int:
        self.code = 0 if self.code is None else self.code
        return self.code

    def send_signal(self, _signum: int) -> None:
        self.code = 0

    terminate = kill = lambda self: self.send_signal(15)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_backoff_doubles_for_quick_deaths_and_the_pool_gives_up_after_five() -> None:
    clock = FakeTime()
    started: list[tuple[int, int, float]] = []
    children: list[FakeChild] = []

    def spawn(index: int, restarts: int) -> FakeChild:
        started.append((index, restarts, clock.now))
        child = FakeChild()
        if index == 1:
            child.code = 1  # worker 1 dies at once, every time
        children.append(child)
        return child

    code = workers.supervise(spawn, 2, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert code == 1
    restarts = [(r, round(t, 1)) for i, r, t in started if i == 1]
    # Restarts 0.5, 1, 2, 4 s after each death (polls every 0.2 s), then it gives up.
    assert [r for r, _ in restarts] == [0, 1, 2, 3, 4]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(restarts)]
    assert [round(g) for g in gaps] == [1, 1, 2, 4]
    assert all(i == 1 for i, r, _ in started if r)  # worker 0 was never restarted
    assert children[0].code == 0  # and was stopped with the pool


def test_a_worker_that_ran_a_while_is_restarted_without_giving_up() -> None:
    clock = FakeTime()
    spawned: list[FakeChild] = []

    def spawn(index: int, restarts: int) -> FakeChild:
        child = FakeChild()
        spawned.append(child)
        return child

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        alive = spawned[-1]
        if clock.now > 60 * len(spawned):  # each worker lives a minute, then dies
            alive.code = -9
        if len(spawned) == 10:
            alive.code = None
            signal.raise_signal(signal.SIGTERM)

    assert workers.supervise(spawn, 1, clock=clock, sleep=sleep) == 0  # type: ignore[arg-type]
    assert len(spawned) == 10

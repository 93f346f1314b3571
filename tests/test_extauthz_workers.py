"""``extauthz serve --workers N``: N real processes on one port, a supervisor over them.

Covers the refusals (unix socket, port 0, a bad count), each worker's own metrics port,
checks answered through the shared port, SIGTERM stopping every worker with exit 0, and a
dead worker taking the pool down with a non-zero exit instead of hiding.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from extauthz import cli, config, workers
from loadtests import procs
from tests import conftest
from tests.extauthz import support
from waypoint.runtime import ports


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
        probe.bind(("127.0.0.1", port))  # no worker is left holding the port


@pytest.mark.asyncio
async def test_a_dead_worker_stops_the_pool(tmp_path: pathlib.Path) -> None:
    async with pool(tmp_path, 2) as (_port, metrics_port, process):
        assert isinstance(process, asyncio.subprocess.Process)
        first, second = _children(process.pid)
        os.kill(first, signal.SIGKILL)
        assert await asyncio.wait_for(process.wait(), 30) == signal.SIGKILL
        assert not procs.extauthz_ready(metrics_port)
        assert not procs.extauthz_ready(metrics_port + 1)
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)

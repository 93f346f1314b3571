"""The extauthz sidecar of a local waypoint: ``extauthz serve`` as a supervised child process.

On a cluster the controller runs extauthz beside Envoy in the waypoint pod, and the kubelet
restarts it when it dies. Locally ``waypoint up`` does both jobs: it runs the same server
with the same generated config (``waypoint.policy.extauthz_config``), only when some policy
of the waypoint needs it, restarts it when that config changes, and restarts it with
backoff when it dies (``extauthz.workers.Pool``, the supervision of ``--workers``), so a
crash costs the checks of a second, not the whole ``waypoint up``.

The child is started and watched from one thread of its own: it gets SIGTERM if that
thread's process dies (``envoy_process.die_with_parent``), and it runs in a session of its
own, so a Ctrl+C at the terminal reaches ``waypoint up``, which stops it in order, rather
than the child, which would be restarted.
"""

from __future__ import annotations

import logging
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz import config as extauthz_config
from extauthz import contract, workers
from waypoint import model, policy
from waypoint.runtime import envoy_process

log = logging.getLogger(__name__)

_STOP_GRACE = 2.0  # the child's drain on SIGTERM; SIGKILL a few seconds after
_READY_SECONDS = 30.0


class SidecarError(RuntimeError):
    """The waypoint needs extauthz but it cannot run (no Rego modules, bad config)."""


class _Supervised:
    """One config's extauthz child, restarted when it dies, by a thread of its own."""

    def __init__(self, config_path: pathlib.Path) -> None:
        self._config_path = config_path
        self._stop = threading.Event()
        self._started = threading.Event()
        self._pool: workers.Pool | None = None
        self.gave_up: int | None = None  # the exit code, once the child kept dying
        self._thread = threading.Thread(target=self._run, name="extauthz-sidecar", daemon=True)
        self._thread.start()
        self._started.wait()

    @property
    def restarts(self) -> int:
        return 0 if self._pool is None else self._pool.restarts

    @property
    def pid(self) -> int | None:
        return None if self._pool is None else self._pool.pids[0]

    def _spawn(self, _index: int, restarts: int) -> subprocess.Popen[bytes]:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        argv = [*envoy_process.die_with_parent(), sys.executable, "-m", "extauthz.cli", "serve"]
        argv += ["--config", str(self._config_path), "--log-level", str(level)]
        if restarts:
            argv += ["--worker-restarts", str(restarts)]
        return subprocess.Popen(argv, start_new_session=True)

    def _run(self) -> None:
        try:
            pool = self._pool = workers.Pool(self._spawn, 1)
        except OSError as exc:
            log.error("cannot start the extauthz sidecar: %s", exc)
            self.gave_up = 1
            return
        finally:
            self._started.set()
        while not self._stop.wait(workers.POLL_SECONDS):
            failed = pool.tend()  # logs each death and restart
            if failed is not None:
                log.error("extauthz sidecar keeps dying (exit %s): checks fail closed", failed)
                self.gave_up = failed
                return
        pool.stop(grace=_STOP_GRACE + 3)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class ExtAuthzSidecar:
    """Keeps an extauthz child process matching the waypoint's policies on ``address``."""

    def __init__(
        self,
        address: str,
        rego_modules: Sequence[str | pathlib.Path],
        decision_log: pathlib.Path,
    ) -> None:
        self.address = address
        self.decision_log = decision_log
        self._config_path = decision_log.with_name("extauthz.yaml")
        self._modules = tuple(str(pathlib.Path(m).absolute()) for m in rego_modules)
        self._config: contract.ConfigDoc | None = None
        self._child: _Supervised | None = None

    @property
    def running(self) -> bool:
        """Whether extauthz is kept running (False too once its child kept dying)."""
        return self._child is not None and self._child.gave_up is None

    @property
    def restarts(self) -> int:
        """How often the child died and was restarted since its config last changed."""
        return 0 if self._child is None else self._child.restarts

    @property
    def pid(self) -> int | None:
        """The running child's pid (None while none runs or one waits for its restart)."""
        return None if self._child is None else self._child.pid

    def apply(self, waypoint: model.Waypoint) -> None:
        """Start, restart or stop extauthz so it serves what ``waypoint`` needs."""
        if not waypoint.needs_extauthz:
            self.stop()
            self._config = None
            return
        if not self._modules:
            raise SidecarError(
                f"waypoint {waypoint.namespace}/{waypoint.name} has an ExtAuthzPolicy: "
                "give the Rego modules its decisions use"
            )
        wanted = policy.extauthz_config(
            waypoint, listen=self.address, modules=self._modules, metrics_listen=None
        )
        wanted["decision_log"] = str(self.decision_log)
        wanted["shutdown_grace_seconds"] = _STOP_GRACE
        if wanted == self._config and self._child is not None:
            return
        self.stop()
        try:
            # Checked here, so a bad config is this call's error rather than a crash loop.
            extauthz_config.from_mapping(wanted, pathlib.Path.cwd())
        except extauthz_config.ConfigError as exc:
            raise SidecarError(f"extauthz config for the waypoint is invalid: {exc}") from exc
        self._config_path.write_text(yaml.safe_dump(wanted, sort_keys=False))
        self._child = _Supervised(self._config_path)
        self._config = wanted
        try:
            self._wait_ready(self._child)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, child: _Supervised) -> None:
        """Until grpc.health.v1 says SERVING; an error if the child dies first."""
        deadline = time.monotonic() + _READY_SECONDS
        request = health_pb2.HealthCheckRequest()
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if child.restarts or child.gave_up is not None:
                    raise SidecarError("extauthz exited while starting: see its log above")
                try:
                    answer = stub.Check(request, timeout=1.0)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise SidecarError(f"extauthz not ready on {self.address} after 30s")
                time.sleep(0.05)

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
        self._child = None

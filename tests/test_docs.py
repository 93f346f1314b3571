"""Every ``sh`` block in README.md and docs/ is exercised, or says why it cannot be here.

A block is preceded by a marker comment, ``<!-- doc-test: KIND -->``; a block without one
fails this test, so a new recipe cannot go unchecked. The kinds:

- ``run``: executed as written with bash in a scratch directory (``examples`` and ``.venv``
  linked in, the venv's scripts on PATH). A long-running last command is started, watched until it is
  ready, then stopped: ``envoy`` waits until its admin port lists the waypoint's listeners.
- ``usage``: a synopsis; every ``--flag`` it shows must be in the command's ``--help``.
- ``args``: commands too long to run in a test (load tests): every ``--flag`` of every
  ``python -m MODULE`` line must be in that module's ``--help``.
- ``suite``: test commands; the test files they name must exist (the suite runs them).
- ``quick-start``: README's two lines; CI runs the second (.ci/run reads it from README), and
  tests/test_cli_local.py runs the first one's ``waypoint up`` (with ``--once``).
- ``cluster``: needs a Kubernetes cluster (or Istio) that these machines do not have.
- ``image``: builds the container image (minutes, or a registry); tests/test_image.py builds it
  the same way, so each step must match tests/podman.py and the Containerfile's ARGs.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests import conftest, podman

DOCS = [conftest.REPO / "README.md", *sorted((conftest.REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- doc-test: ([a-z-]+)(?: [^>]*)? -->\n)?```sh\n(.*?)```", re.S)
KINDS = {"run", "usage", "args", "suite", "quick-start", "cluster", "image"}
BIN = pathlib.Path(sys.executable).parent
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _blocks() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start(2)].count("\n")
            found.append(
                (f"{doc.relative_to(conftest.REPO)}:{line}", match.group(1) or "", match.group(2))
            )
    return found


BLOCKS = _blocks()


def _commands(body: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blanks dropped."""
    joined = body.replace("\\\n", " ")
    return [
        line.split(" #")[0].strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _help(argv: list[str]) -> str:
    done = subprocess.run(
        [*argv, "--help"], capture_output=True, text=True, timeout=60, cwd=conftest.REPO
    )
    assert done.returncode == 0, (argv, done.stderr)
    return done.stdout


def _flags_known(command: list[str], help_argv: list[str]) -> None:
    text = _help(help_argv)
    unknown = [flag for flag in FLAG.findall(" ".join(command)) if flag not in text]
    assert not unknown, f"{' '.join(command)}: not in {' '.join(help_argv)} --help: {unknown}"


@pytest.mark.parametrize(("where", "kind", "body"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_is_exercised(where: str, kind: str, body: str, tmp_path: pathlib.Path) -> None:
    assert kind in KINDS, f"{where}: mark the block with <!-- doc-test: KIND --> ({sorted(KINDS)})"
    if kind == "run":
        _run(body, tmp_path)
    elif kind == "usage":
        for command in _commands(body):
            argv = shlex.split(command.replace("[", " ").replace("]", " ").replace("|", " "))
            _flags_known(argv, [str(BIN / argv[0]), argv[1]])
    elif kind == "args":
        for command in _commands(body):
            argv = shlex.split(command)
            if argv[:2] == ["python", "-m"]:
                _flags_known(argv, [sys.executable, "-m", argv[2]])
    elif kind == "suite":
        for command in _commands(body):
            paths = [a for a in shlex.split(command) if a.startswith("tests/")]
            assert paths, command
            assert all((conftest.REPO / p).exists() for p in paths), command
    elif kind == "image":
        for command in _commands(body):
            _image_step_matches_the_test(command)
    elif kind == "quick-start":
        lines = _commands(body)
        ci = (conftest.REPO / ".ci" / "run").read_text()
        assert len(lines) == 2
        assert "README.md" in ci, "CI must run the README's second line"
        assert lines[0].endswith(".venv/bin/waypoint up"), lines[0]


def _image_step_matches_the_test(command: str) -> None:
    argv = shlex.split(command)
    if argv[0] == "mmdebstrap":
        assert f"--include={podman.DEBIAN_PACKAGES}" in argv, command
    elif argv[:2] == ["podman", "import"]:
        assert podman.BASE_ENV in argv, command
    elif argv[:2] == ["podman", "build"]:
        args = [a.split("=")[0] for flag, a in itertools.pairwise(argv) if flag == "--build-arg"]
        declared = re.findall(r"^ARG (\w+)", (conftest.REPO / "Containerfile").read_text(), re.M)
        assert set(args) <= set(declared), (command, declared)


def _run(body: str, tmp_path: pathlib.Path) -> None:
    (tmp_path / "examples").symlink_to(conftest.REPO / "examples")
    (tmp_path / ".venv").symlink_to(sys.prefix)  # recipes may say .venv/bin/...
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    lines = _commands(body)
    last = shlex.split(lines[-1])
    if last[0] != "envoy":
        script = "set -e\n" + "\n".join(lines)
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, (script, done.stdout, done.stderr)
        return
    # The recipe ends by running Envoy in the foreground: start the whole block in its own
    # process group, wait for the waypoint's listeners on the admin port, then stop it all.
    script = "set -e\n" + "\n".join([*lines[:-1], f"exec {lines[-1]} --disable-hot-restart"])
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        listeners = _wait_for_listeners("http://127.0.0.1:15000/listeners", proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert "connect_terminate" in listeners, output


def _wait_for_listeners(url: str, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the recipe ended before Envoy was ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text: str = response.read().decode()
            if "connect_terminate" in text:
                return text
        except OSError:
            pass
        time.sleep(0.2)
    return ""

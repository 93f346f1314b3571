"""The code base stays ruff clean and passes mypy --strict (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from tests import conftest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=conftest.REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def test_ruff_lint() -> None:
    proc = _run("ruff", "check", "waypoint", "extauthz", "tests", "loadtests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format() -> None:
    proc = _run("ruff", "format", "--check", "waypoint", "extauthz", "tests", "loadtests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict() -> None:
    proc = _run("mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr

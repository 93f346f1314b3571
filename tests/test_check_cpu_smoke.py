"""The CPU-per-Check bench (``python -m loadtests.check_cpu``), run tiny.

It shows the bench serves this tree and yields a figure; it measures nothing.
"""

from __future__ import annotations

import pathlib
import types

import pytest

from loadtests import check_cpu


def test_a_tiny_run_yields_a_cpu_figure(tmp_path: pathlib.Path) -> None:
    # 400 Checks are about 0.1 s of CPU: several of the kernel's 10 ms ticks, never zero.
    assert check_cpu.measure(400, 4, tmp_path) > 0


def test_a_check_that_is_not_allowed_is_an_error() -> None:
    denied = types.SimpleNamespace(status=types.SimpleNamespace(code=7))  # a CheckResponse's shape
    with pytest.raises(RuntimeError, match="not allowed"):
        check_cpu._allowed(denied)

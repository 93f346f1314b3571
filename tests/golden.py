"""Golden-file comparison: ``pytest --update-golden`` rewrites the expected files."""

from __future__ import annotations

import pathlib

import yaml

UPDATE = False  # set by tests/conftest.py from --update-golden


def dump(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def check(expected_path: pathlib.Path, actual: str) -> None:
    """Compare ``actual`` with the file; rewrite it instead when updating."""
    if UPDATE or not expected_path.exists():
        expected_path.write_text(actual)
        if not UPDATE:
            raise AssertionError(f"{expected_path} was missing; written, review and re-run")
        return
    expected = expected_path.read_text()
    assert actual == expected, f"{expected_path} differs; re-run with --update-golden to accept"

"""The layering of ``.importlinter`` holds, and the check is real: a broken layering fails it.

``lint-imports`` reads the import graph of this checkout (not an installed copy: the repository
root goes first on its ``PYTHONPATH``) and checks every contract of the config it is given.
"""

from __future__ import annotations

import configparser
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = REPO / ".importlinter"
LAYERS = "importlinter:contract:layers"
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")


def _lint(config: pathlib.Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: install the test extras"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _layers(parser: configparser.ConfigParser) -> list[str]:
    return [line for line in parser[LAYERS]["layers"].splitlines() if line.strip()]


def _variant(tmp_path: pathlib.Path, layers: list[str]) -> pathlib.Path:
    """The repository's config with the layers contract's layers replaced by ``layers``."""
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    parser[LAYERS]["layers"] = "\n" + "\n".join(layers)
    path = tmp_path / ".importlinter"
    with path.open("w") as out:
        parser.write(out)
    return path


def test_the_contracts_hold() -> None:
    result = _lint(CONFIG)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 broken" in output, output


def test_an_inverted_layer_is_caught(tmp_path: pathlib.Path) -> None:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    layers = _layers(parser)
    envoy = layers.index("envoy")
    above = layers[envoy - 1]
    assert "pipeline" in above  # the pipeline renders through the Envoy builders
    layers[envoy - 1], layers[envoy] = layers[envoy], above
    result = _lint(_variant(tmp_path, layers))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "BROKEN" in output, output
    assert "waypoint.pipeline" in output, output


@pytest.mark.parametrize("dropped", ["wellknown", "runtime"])
def test_a_package_without_a_layer_is_caught(tmp_path: pathlib.Path, dropped: str) -> None:
    """Every subpackage of waypoint must be given a layer (the contract is exhaustive)."""
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    layers = []
    for line in _layers(parser):
        kept = [name.strip() for name in line.split("|") if name.strip() != dropped]
        assert len(kept) >= 1
        layers.append(" | ".join(kept))
    result = _lint(_variant(tmp_path, layers))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"waypoint.{dropped}" in output, output

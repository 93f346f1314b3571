"""Pytest fixtures shared by the controller and CLI tests: a seeded fake API server and a client.

Registered from tests/conftest.py; a test module that needs another world overrides ``fake``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.fakekube import server, world
from waypoint.controller import apiclient


@pytest.fixture
def fake() -> Iterator[server.FakeKube]:
    """The fake API server with the waypoint GatewayClass and the ``demo`` mesh namespace."""
    with server.FakeKube(bookmark_interval=0.2) as running:
        running.seed([world.gateway_class(), *world.mesh("demo")])
        yield running


@pytest.fixture
def api(fake: server.FakeKube, tmp_path: pathlib.Path) -> Iterator[apiclient.Cluster]:
    """The project's cluster client, connected to ``fake`` through a kubeconfig."""
    with world.connect(fake, tmp_path) as connected:
        yield connected

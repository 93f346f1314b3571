"""LocalStack runs the extauthz sidecar only while some policy needs it, with the generated config."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import yaml

from waypoint.commands import up
from waypoint.local import sidecar
from waypoint.local import stack as stack_mod


def _world(with_policies: bool) -> list[dict[str, Any]]:
    # Own loopback addresses, so this test never collides with a running `waypoint up`.
    text = (up.EXAMPLE / "world.yaml").read_text().replace("127.0.10.", "127.0.12.")
    if with_policies:
        text += "\n---\n" + (up.EXAMPLE / "policies.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_sidecar_follows_the_policies() -> None:
    with stack_mod.LocalStack(
        _world(False), "demo", "waypoint", rego_modules=[up.EXAMPLE_REGO]
    ) as local:
        assert not local.extauthz_running
        authority = local.authority("demo", "echo-v1", 80)
        client = local.client("demo", "sleep")
        try:
            assert client.request(authority, "GET", "/admin").status == 200  # no policy yet
            local.reload(_world(True))
            assert local.extauthz_running
            assert client.request(authority, "GET", "/admin").status == 403
            viewer = {"authorization": f"Bearer {up.demo_token('viewer')}"}
            assert client.request(authority, "GET", "/admin", viewer.items()).status == 403
            admin = {"authorization": f"Bearer {up.demo_token('admin')}"}
            assert client.request(authority, "GET", "/admin", admin.items()).status == 200
            local.reload(_world(False))
            assert not local.extauthz_running
            assert client.request(authority, "GET", "/admin").status == 200
        finally:
            client.close()


def test_a_policy_without_rego_modules_is_a_clear_error() -> None:
    with pytest.raises(sidecar.SidecarError, match="ExtAuthzPolicy"):
        stack_mod.LocalStack(_world(True), "demo", "waypoint").start()


def test_a_killed_sidecar_is_restarted_and_checks_succeed_again() -> None:
    with stack_mod.LocalStack(
        _world(True), "demo", "waypoint", rego_modules=[up.EXAMPLE_REGO]
    ) as local:
        authority = local.authority("demo", "echo-v1", 80)
        client = local.client("demo", "sleep")
        admin = {"authorization": f"Bearer {up.demo_token('admin')}"}
        try:
            assert client.request(authority, "GET", "/admin", admin.items()).status == 200
            assert local._sidecar is not None
            first = local._sidecar.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 20
            statuses = []
            while time.monotonic() < deadline:
                status = client.request(authority, "GET", "/admin", admin.items()).status
                statuses.append(status)
                if status == 200 and local._sidecar.pid not in (None, first):
                    break
                time.sleep(0.1)
            assert statuses[-1] == 200, statuses
            assert local._sidecar.pid not in (None, first)
            assert local._sidecar.restarts == 1
            assert local.extauthz_running
        finally:
            client.close()

"""The extauthz sidecar of a local waypoint, run in-process on the stack's event loop.

On a cluster the controller runs extauthz beside Envoy in the waypoint pod; locally we run the
same server with the same generated config (``waypoint.policy.extauthz_config``), only when
some policy of the waypoint needs it, and restart it when that config changes.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from extauthz import config as extauthz_config
from extauthz import contract
from extauthz import server as extauthz_server
from waypoint import model, policy
from waypoint.local.hbone import loop

_STOP_GRACE = 2.0


class SidecarError(RuntimeError):
    """The waypoint needs extauthz but it cannot run (no Rego modules, bad config)."""


class ExtAuthzSidecar:
    """Keeps an extauthz server matching the waypoint's policies on ``address``."""

    def __init__(
        self,
        runner: loop.LoopThread,
        address: str,
        rego_modules: Sequence[str | pathlib.Path],
        decision_log: pathlib.Path,
    ) -> None:
        self._runner = runner
        self.address = address
        self.decision_log = decision_log
        self._modules = tuple(str(pathlib.Path(m).absolute()) for m in rego_modules)
        self._config: contract.ConfigDoc | None = None
        self._server: extauthz_server.ExtAuthzServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def apply(self, waypoint: model.Waypoint) -> None:
        """Start, restart or stop extauthz so it serves what ``waypoint`` needs."""
        if not waypoint.needs_extauthz:
            self.stop()
            self._config = None
            return
        if not self._modules:
            raise SidecarError(
                f"waypoint {waypoint.namespace}/{waypoint.name} has an ExtAuthzPolicy: "
                "give the Rego modules its decisions use"
            )
        wanted = policy.extauthz_config(
            waypoint, listen=self.address, modules=self._modules, metrics_listen=None
        )
        wanted["decision_log"] = str(self.decision_log)
        if wanted == self._config and self._server is not None:
            return
        self.stop()
        try:
            settings = extauthz_config.from_mapping(wanted, pathlib.Path.cwd())
        except extauthz_config.ConfigError as exc:
            raise SidecarError(f"extauthz config for the waypoint is invalid: {exc}") from exc
        self._server = self._runner.run(self._start(settings), 30.0)
        self._config = wanted

    async def _start(self, settings: extauthz_config.Settings) -> extauthz_server.ExtAuthzServer:
        server, _port = await extauthz_server.run_server(settings)
        await server.wait_ready()
        return server

    def stop(self) -> None:
        if self._server is not None and self._runner.running:
            self._runner.run(self._server.stop(_STOP_GRACE), 30.0)
        self._server = None

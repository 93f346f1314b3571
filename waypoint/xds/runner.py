"""An ADS server and its event loop in a background thread, for synchronous callers.

The ``waypoint serve`` command, tests and benchmarks use it; the cache is thread-safe, so they
set snapshots from their own thread while the server streams from its loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from waypoint.xds import cache, server

T = TypeVar("T")


class ServerThread:
    """Run :class:`server.AdsServer` on ``address`` until :meth:`stop`."""

    def __init__(
        self,
        snapshots: cache.SnapshotCache,
        address: str = "127.0.0.1:0",
        removal_delay: float = 1.0,
    ) -> None:
        self.cache = snapshots
        self.address = address
        self.ads = server.AdsServer(snapshots, removal_delay=removal_delay)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="xds", daemon=True)
        self.port = 0

    def start(self) -> int:
        self._thread.start()
        self.port = self.call(self.ads.start(self.address))
        return self.port

    @property
    def target(self) -> str:
        """``host:port`` an Envoy bootstrap should name."""
        host = self.address.rpartition(":")[0] or "127.0.0.1"
        return f"{host}:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def connected(self) -> list[tuple[str, str, str]]:
        async def read() -> list[tuple[str, str, str]]:
            return self.ads.connected()

        return self.call(read())

    def stop(self, grace: float | None = None) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self.ads.stop(grace))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

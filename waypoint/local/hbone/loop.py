"""An asyncio event loop running in a daemon thread, for synchronous callers.

Sync tests, the sync HBONE client and the threaded server runners submit coroutines
here; one process-wide loop (:func:`shared`) keeps thread count flat when many clients
and servers coexist.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_shared: LoopThread | None = None
_shared_lock = threading.Lock()


class LoopThread:
    """Own an event loop on a background thread until :meth:`stop`."""

    def __init__(self, name: str = "waypoint-loop") -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self._thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; return a thread-safe future."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop thread: await instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block this thread for its result."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"coroutine did not finish within {timeout}s") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel leftover tasks, stop the loop and join the thread."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            self.run(_cancel_others(), timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        self.loop.close()


async def _cancel_others() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def shared() -> LoopThread:
    """The process-wide loop thread, started on first use and never stopped."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            _shared = LoopThread("waypoint-shared-loop")
        return _shared


_Service = TypeVar("_Service", bound="BackgroundService")


class BackgroundService(abc.ABC):
    """Lifecycle shared by our asyncio servers: async and sync context managers.

    Subclasses implement ``async start() -> Self`` and ``async stop()``; synchronous callers
    (tests, locust users, ``waypoint up``) run them on a loop thread, the shared one by default.
    """

    _runner: LoopThread | None = None

    @abc.abstractmethod
    async def start(self: _Service) -> _Service: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self: _Service) -> _Service:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def start_background(self: _Service, runner: LoopThread | None = None) -> _Service:
        """Start on a loop thread (default: the shared one) for synchronous callers."""
        self._runner = runner or shared()
        self._runner.run(self.start(), 30.0)
        return self

    def stop_background(self) -> None:
        if self._runner is not None and self._runner.running:
            self._runner.run(self.stop(), 30.0)
        self._runner = None

    def __enter__(self: _Service) -> _Service:
        return self.start_background()

    def __exit__(self, *_exc: object) -> None:
        self.stop_background()

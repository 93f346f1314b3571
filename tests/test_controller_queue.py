"""The work queue: deduplication, per-key exponential backoff, no concurrent runs of a key."""

from __future__ import annotations

from waypoint.controller import queue as kqueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_duplicates_collapse() -> None:
    queue = kqueue.WorkQueue()
    for _ in range(3):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["a", "b", None]


def test_key_added_while_processing_runs_again_after_done() -> None:
    queue = kqueue.WorkQueue()
    queue.add("a")
    assert queue.get(0) == "a"
    queue.add("a")
    assert queue.get(0) is None  # not handed to a second worker while the first runs
    queue.done("a")
    assert queue.get(0) == "a"


def test_backoff_doubles_and_forget_resets() -> None:
    clock = Clock()
    queue = kqueue.WorkQueue(base_delay=1.0, max_delay=5.0, clock=clock)
    delays = []
    for _ in range(5):
        delays.append(queue.add_rate_limited("a"))
        clock.now += 10
        assert queue.get(0) == "a"
        queue.done("a")
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    queue.forget("a")
    assert queue.failures("a") == 0
    assert queue.add_rate_limited("a") == 1.0


def test_delayed_key_waits_for_its_time() -> None:
    clock = Clock()
    queue = kqueue.WorkQueue(clock=clock)
    queue.add_after("a", 5.0)
    assert queue.get(0) is None
    clock.now = 5.0
    assert queue.get(0) == "a"


def test_shutdown_releases_waiters() -> None:
    queue = kqueue.WorkQueue()
    queue.shutdown()
    assert queue.get(None) is None

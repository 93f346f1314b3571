"""Pausing Python's cyclic garbage collector around a translation, safely across threads.

A translation allocates many short-lived objects; the full collections they trigger walk the
whole long-lived heap (the world and, in the controller, its caches) and made translating
1,000 Services 15-35 % slower (docs/controller.md). Reference counting frees the garbage anyway.
The collector is one switch for the whole process, so a save-and-restore per caller is wrong
once two threads translate at once. ``paused`` counts its holders under a lock: the first one
in turns collection off (if it was on), the last one out turns it back on.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_holders = 0
_restore = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    global _holders, _restore
    with _lock:
        if _holders == 0:
            _restore = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _restore:
                gc.enable()

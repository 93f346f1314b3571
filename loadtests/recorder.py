"""Exact latency percentiles for a load run, kept beside locust's own statistics.

Locust rounds response times to whole milliseconds before it computes percentiles, and the
numbers that matter here are fractions of a millisecond. The recorder keeps every sample as a
float (60 s at 1,000 rps is 60,000 doubles), drops the warm-up, and writes one JSON summary
that the harness turns into the table. It imports nothing from locust: the locustfile wires
:meth:`Recorder.on_request` to ``events.request``.
"""

from __future__ import annotations

import array
import collections
import json
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_MAX_ERROR_KINDS = 20
# A p99 is decided by the 1 % of samples above it. Their count is binomial, so with n samples
# it is 0.01n give or take sqrt(0.0099n): 10,000 samples put 100 above the p99, known to
# about 10 %. Fewer, and a ratio of two p99s is mostly noise, so no verdict is printed.
MIN_P99_SAMPLES = 10_000


def too_few_for_p99(samples: int) -> str | None:
    """Why ``samples`` cannot support a verdict on a p99, or None when they can."""
    if samples >= MIN_P99_SAMPLES:
        return None
    return (
        f"no verdict: {samples:,} samples, and a p99 needs at least {MIN_P99_SAMPLES:,} "
        f"(100 above it) to be known to about 10 %; run longer or at a higher rate"
    )


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of an ascending sequence; NaN when empty."""
    if not ordered:
        return math.nan
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is outside (0, 100]")
    rank = math.ceil(q / 100 * len(ordered))
    return float(ordered[max(rank, 1) - 1])


def summarize(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    out = {f"p{q:g}": percentile(ordered, q) for q in PERCENTILES}
    out["mean"] = sum(ordered) / len(ordered) if ordered else math.nan
    out["max"] = ordered[-1] if ordered else math.nan
    return out


class Recorder:
    """Collect request outcomes after ``warmup_seconds`` from the first one."""

    def __init__(self, warmup_seconds: float = 0.0, clock: Any = time.monotonic) -> None:
        self.warmup_seconds = warmup_seconds
        self._clock = clock
        self._first: float | None = None
        self._window_start: float | None = None
        self._last: float | None = None
        self.samples: dict[str, array.array[float]] = collections.defaultdict(
            lambda: array.array("d")
        )
        self.failures: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.warmup_requests = 0

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: BaseException | None = None,
        **_kwargs: Any,
    ) -> None:
        now = self._clock()
        if self._first is None:
            self._first = now
        if now - self._first < self.warmup_seconds:
            self.warmup_requests += 1
            return
        if self._window_start is None:
            self._window_start = now
        self._last = now
        self.samples[name].append(float(response_time))
        if exception is not None:
            self.failures[name] += 1
            kind = f"{name}: {exception}"[:200]
            if kind in self.errors or len(self.errors) < _MAX_ERROR_KINDS:
                self.errors[kind] += 1

    def summary(self) -> dict[str, Any]:
        merged: list[float] = []
        by_name: dict[str, Any] = {}
        for name in sorted(self.samples):
            values = self.samples[name]
            merged.extend(values)
            by_name[name] = {
                "requests": len(values),
                "failures": self.failures[name],
                **summarize(values),
            }
        window = 0.0
        if self._window_start is not None and self._last is not None:
            window = self._last - self._window_start
        return {
            "requests": len(merged),
            "failures": sum(self.failures.values()),
            "window_seconds": window,
            "warmup_requests": self.warmup_requests,
            "latency_ms": summarize(merged),
            "by_name": by_name,
            "errors": dict(self.errors.most_common()),
        }

    def write(self, file: str | pathlib.Path) -> None:
        pathlib.Path(file).write_text(json.dumps(self.summary(), indent=1, sort_keys=True))

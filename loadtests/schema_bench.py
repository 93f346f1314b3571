"""Schema-check benchmark: what checking objects against their schemas adds to translation.

Run: ``python -m loadtests.schema_bench`` (``--services``, ``--rounds``). Not a test: it prints
figures, which docs/waypoint.md records. The world is ``xds_bench``'s (N Services, each with an
EndpointSlice and an HTTPRoute of two rules). Translation with and without the checks runs
interleaved in one process, so that a busy machine slows both alike, and the checks alone
(``schemacheck.report`` on the same objects) are timed too; medians of the rounds, cyclic GC
paused as in a reload.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

from loadtests import xds_bench
from waypoint import translate
from waypoint.translate import schemacheck, status


def _seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench(services: int, rounds: int) -> tuple[float, float, float]:
    """Median seconds: translate with checks, without, and the checks alone."""
    objects = xds_bench.world(services, 8080)
    on, off, alone = [], [], []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            on.append(_seconds(lambda: translate.translate(objects, check_schemas=True)))
            off.append(_seconds(lambda: translate.translate(objects, check_schemas=False)))
            alone.append(_seconds(lambda: schemacheck.report(objects, status.Book())))
    finally:
        if enabled:
            gc.enable()
    return statistics.median(on), statistics.median(off), statistics.median(alone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    on, off, alone = bench(args.services, args.rounds)
    print(f"{args.services} Services ({args.services * 3 + 1} objects), median of {args.rounds}:")
    print(f"  translate with schema checks    {on * 1000:8.1f} ms")
    print(f"  translate without               {off * 1000:8.1f} ms")
    print(
        f"  the checks alone                {alone * 1000:8.1f} ms ({alone / off:.1%} of translate)"
    )


if __name__ == "__main__":
    main()

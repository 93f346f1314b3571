"""extauthz's CPU per Check over plain gRPC, no Envoy: the quietest figure of what a change costs.

``extauthz_bench`` measures extauthz behind Envoy, as it runs; its CPU per 1k requests
moves by several percent between runs of the same code, because Envoy and ``hey`` share
the machine's two cores with it. This bench leaves them out. One ``extauthz serve``
process (the load-test config: RS256 JWT, the embedded policy, decision log on) answers
``--checks`` Checks from one gRPC channel with ``--in-flight`` calls outstanding, after a
warm-up; the figure is the server's CPU time (user + system) per 1,000 Checks, per run.

With ``--in-flight 1`` every Check arrives in a read of its own, as Envoy's mostly do at
moderate rates, so per-read costs count in full. To compare two trees, run it from each
checkout in turn (it serves the tree it is run from), interleaved:

    python -m loadtests.check_cpu                          # 10,000 Checks x 5 runs
    python -m loadtests.check_cpu --in-flight 16 --runs 3

Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
from collections import deque
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from loadtests import authz, hostile_bench
from waypoint.runtime import ports

WARMUP = 2000


def measure(checks: int, in_flight: int, workdir: pathlib.Path) -> float:
    """One run: a fresh server, ``checks`` Checks; its CPU seconds per 1,000 of them."""
    port = ports.free_port()
    doc = {**authz.bench_config(f"127.0.0.1:{port}"), "transport": "h2"}
    server = authz.start_extauthz("extauthz", workdir, doc)
    try:
        request = hostile_bench.check_request(authz.demo_tokens()["admin"])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            for _ in range(min(WARMUP, checks)):
                stub.Check(request, timeout=5)
            before = server.usage()
            pending: deque[Any] = deque()
            for _ in range(checks):
                pending.append(stub.Check.future(request, timeout=5))
                if len(pending) >= in_flight:
                    _allowed(pending.popleft().result())
            for call in pending:
                _allowed(call.result())
            after = server.usage()
        server.check_alive()
    finally:
        server.stop()
    return (after.cpu_seconds - before.cpu_seconds) * 1000 / checks


def _allowed(answer: Any) -> None:
    # A denied or failed Check costs less than an allowed one: it would flatter the figure.
    if answer.status.code != 0:
        raise RuntimeError(f"a Check was not allowed: {answer.status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=10_000, help="Checks measured per run")
    parser.add_argument("--in-flight", type=int, default=1, help="calls outstanding at once")
    parser.add_argument("--runs", type=int, default=5, help="runs, each on a fresh server")
    args = parser.parse_args(argv)
    figures = []
    with tempfile.TemporaryDirectory(prefix="check-cpu-") as tmp:
        for run in range(args.runs):
            figure = measure(args.checks, args.in_flight, pathlib.Path(tmp) / str(run))
            figures.append(figure)
            print(f"run {run + 1}: {figure * 1000:.1f} ms of server CPU per 1k Checks", flush=True)
    spread = statistics.stdev(figures) * 1000 if len(figures) > 1 else 0.0
    print(
        f"{args.checks} Checks x {args.runs} runs, {args.in_flight} in flight, from "
        f"{authz.REPO}: mean {statistics.mean(figures) * 1000:.1f} ms per 1k, "
        f"stdev {spread:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

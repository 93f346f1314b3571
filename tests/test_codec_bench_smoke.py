"""The codec benchmark (``python -m loadtests.codec_bench``), run tiny in-process.

It shows every measure runs on this tree and yields a time; it measures nothing.
"""

from __future__ import annotations

import asyncio

from loadtests import codec_bench

MICRO = {"echo-pb encode", "echo-pb decode", "http1 client", "http1 server"}
END_TO_END = {"hbone http1", "hbone keep-alive", "hbone grpc", "opa double"}


def test_every_measure_runs_and_reports_a_time() -> None:
    micro = codec_bench.micro(40)
    assert set(micro) == MICRO
    e2e = asyncio.run(codec_bench.end_to_end(10))
    assert set(e2e) == {f"{name} {kind}" for name in END_TO_END for kind in ("wall", "cpu")}
    assert all(value > 0 for value in (micro | e2e).values())
    table = codec_bench.markdown({"that": [micro], "this": [micro]})
    assert "| http1 server | " in table
    assert table.splitlines()[2].endswith("1.00× |")

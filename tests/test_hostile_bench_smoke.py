"""The hostile-client benchmark (``python -m loadtests.hostile_bench``), run tiny.

Two short attacks against a real ``extauthz serve``: it shows the attackers, the legit
client and the meters run on this tree and fill the table; it measures nothing.
"""

from __future__ import annotations

import pytest

from loadtests import hostile_bench


def test_two_short_attacks_fill_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--transports", "h2", "--attacks", "memory,ping-flood", "--duration", "1.5"]
    assert hostile_bench.main([*argv, "--rate", "40", "--memory-connections", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| h2 |")]
    assert [row.split(" | ")[1] for row in rows] == ["quiet", "memory", "ping-flood"]
    # The flood is cut off; the legit client lost nothing.
    flood = rows[2].split(" | ")
    assert int(flood[8]) > 0
    assert all(row.split(" | ")[5] == "0" for row in rows)

"""extauthz.allocator: after it, a freed large block no longer pulls the next ones into the heap.

Each case runs in a fresh interpreter: mallopt changes the whole process for good.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# How many bytes of a 2 MiB block, allocated after an 8 MiB one was freed, glibc mapped
# on its own (mallinfo2's hblkhd grows by them) rather than carving from the heap.
PROBE = """
import ctypes, sys
from extauthz import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "set":
    assert allocator.return_large_blocks()
freed = bytearray(8 * 2**20)
del freed  # by default glibc now serves blocks up to 8 MiB from the heap
before = libc.mallinfo2().hblkhd
block = bytearray(2 * 2**20)
print(libc.mallinfo2().hblkhd - before)
"""


def mapped_after_a_free(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(run.stdout)


@pytest.mark.parametrize(("mode", "mapped"), [("default", False), ("set", True)])
def test_a_large_block_gets_pages_of_its_own_only_once_set(mode: str, mapped: bool) -> None:
    # The default case shows what is being fixed: glibc's moving threshold.
    assert (mapped_after_a_free(mode) >= 2 * 2**20) is mapped

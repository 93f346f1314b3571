"""The process's C allocator, told to give large request buffers back to the system.

Why: glibc's malloc serves a block of 128 KiB or more with its own mmap and unmaps it when
freed, but the first time such a block is freed it raises that threshold to the block's
size (up to 32 MiB; mallopt(3), "M_MMAP_THRESHOLD"). From then on a request body of a few
MiB is carved out of the heap, and when it is freed its pages stay resident, in holes the
heap cannot give back. Measured under the memory attack of ``loadtests.hostile_bench``
(30 connections holding unfinished 4 MiB bodies): the heap grew to 54 MiB with 43 MiB in
use and stayed at 48 MiB once the bodies were gone, and peak RSS went 8-10 MiB past
``max_buffered_request_bytes``. With the threshold set once, at 64 KiB, it stops moving:
every body that outgrows 64 KiB lives in pages of its own, returned when the call ends, and
RSS follows the bytes held (docs/extauthz.md).

The quiet path does not notice: a Check is a few KiB, reads go into one 16 KiB buffer
(``h2grpc._Connection.get_buffer``), so nothing on it reaches 64 KiB.

Other C libraries (musl's malloc already maps large blocks itself) are left as they are.
"""

from __future__ import annotations

import ctypes
import platform

M_MMAP_THRESHOLD = -3  # <malloc.h>
LARGE_BLOCK_BYTES = 64 * 1024


def return_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Have glibc map every block of ``threshold`` bytes or more on its own, for good.

    Returns whether it took: False on another C library, or if glibc refused.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the process's own symbols: glibc's, as it is linked
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))

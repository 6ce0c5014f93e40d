"""toolkit.facts.process: large_frees_returned hands freed blocks back to the OS (glibc only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh interpreter: free one 30 MiB block (glibc's dynamic rule then serves everything smaller from
# its heap), allocate and touch 64 blocks of 8 MiB, free all but the last (which pins the heap's top, so
# glibc cannot trim), and print how much of the 512 MiB stayed resident.
SCRIPT = r"""
import ctypes, sys
from toolkit.facts.process import large_frees_returned, rss_bytes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def churn():
    libc.free(libc.malloc(30 << 20))
    blocks = []
    for _ in range(64):
        p = libc.malloc(8 << 20)
        libc.memset(p, 1, 8 << 20)
        blocks.append(p)
    base = rss_bytes() - 64 * (8 << 20)
    for p in blocks[:-1]:
        libc.free(p)
    kept = rss_bytes() - base - (8 << 20)
    libc.free(blocks[-1])
    return kept
if sys.argv[1] == "inside":
    with large_frees_returned():
        print(churn() >> 20)
else:
    print(churn() >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_blocks_leave_the_process_inside_the_region():
    def kept_mib(where: str) -> int:
        out = subprocess.run([sys.executable, "-c", SCRIPT, where], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert kept_mib("outside") > 400  # glibc's default keeps the freed 504 MiB in its heap
    assert kept_mib("inside") < 32  # each block was its own mapping, unmapped when freed

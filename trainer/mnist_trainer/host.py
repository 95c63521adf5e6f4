"""Process-wide settings for OpenMP and the C allocator, applied before torch loads.

Both matter for a trial's speed on a few shared CPU cores and neither can be set from
torch's own API, so `python -m mnist_trainer` calls `configure()` first thing.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Every activation and gradient of a training step is allocated and freed again each
# step. glibc serves blocks above its mmap threshold with fresh pages and trims freed
# heap tops, so each step paid about a page fault per 4 KiB it touched (3.5 million
# faults in one epoch at batch 64). Keeping blocks up to 32 MiB (glibc's ceiling) on the
# heap, and the heap untrimmed below 1 GiB, lets the next step reuse the same pages.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30
# Idle OpenMP threads spin only briefly before sleeping. When a trial shares its CPUs
# (parallel trials, a busy node) long spinning takes the time slices the working threads
# need; on two shared cores libgomp's default made an epoch about twice as slow as this,
# while never spinning (OMP_WAIT_POLICY=PASSIVE) made small batches on idle cores about
# twice as slow.
GOMP_SPINCOUNT = "1000"


def configure() -> bool:
    """Apply both settings; return whether the allocator took them (glibc only).

    The environment can still override the OpenMP setting. Must run before torch is
    imported, since libgomp reads its environment when it loads.
    """
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # a libc without mallopt, such as musl
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )

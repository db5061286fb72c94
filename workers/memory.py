"""Keep image buffers in the worker's heap between calls, instead of paging them in each time.

Every image call allocates and frees buffers from a few hundred kilobytes
to a few megabytes (the source bytes, the decoded picture, the resampling
passes). glibc's default malloc serves such sizes with ``mmap`` or hands
the freed top of a heap back to the kernel (its thresholds adapt, and
trimming in per-thread arenas keeps undoing the adaptation), so the next
call faults the same memory back in page by page. Measured on a
1920×1080 cover-and-crop: ~300 page faults and 0.4 ms of kernel time per
call, 4–5 % of the call.

:func:`tune_malloc` fixes both thresholds (``mallopt``): allocations up to
:data:`MMAP_THRESHOLD` come from the heap, and up to :data:`TRIM_THRESHOLD`
of free memory stays there for the next call. The worker's resident size
then follows its largest recent working set (see the memory benchmark)
rather than dipping between calls. Other C libraries have no ``mallopt``
of this kind: there it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 16 * 1024 * 1024  # glibc allows up to 32 MiB on 64-bit
TRIM_THRESHOLD = 64 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Fix glibc malloc's thresholds (module doc); False where that is not possible."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not done:
        log.info("malloc thresholds left as they are (mallopt refused)")
    return done

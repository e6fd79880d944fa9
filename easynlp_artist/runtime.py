"""Process-wide settings that make CPU inference and training faster.

glibc's ``malloc`` hands every block above its mmap threshold (at most 32 MiB, usually far less)
straight back to the kernel when it is freed, so the next tensor of that size is page-faulted in
and zeroed afresh. The VQGAN decoder allocates a new full-resolution feature map for nearly every
operation (a 256-px map of 128 channels is 32 MiB), and those faults cost ~15 % of a decode on
one core (bench/README.md). :func:`tune_cpu_allocator` keeps freed memory in the process
instead, as jemalloc or tcmalloc would: large blocks come from the heap and the heap is trimmed
only past 1 GiB of free space at its top. The price is that the resident size stays near its peak
after a large step. The ``easynlp`` app calls it (``tune_allocator=false`` turns it off); in a
notebook call it once after import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# <malloc.h> parameter numbers for mallopt
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30

_applied = False


def _glibc():  # noqa: ANN202 - the C library, or None where it is not glibc
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process (glibc only). Returns whether the setting is in effect.

    Idempotent; a no-op returning False on other C libraries and operating systems.
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success, 0 on error
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _applied

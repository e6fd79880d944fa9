"""Process-wide settings that make CPU inference and training faster: the allocator and the threads.

glibc's ``malloc`` hands every block above its mmap threshold (at most 32 MiB, usually far less)
straight back to the kernel when it is freed, so the next tensor of that size is page-faulted in
and zeroed afresh. The VQGAN decoder allocates a new full-resolution feature map for nearly every
operation (a 256-px map of 128 channels is 32 MiB), and those faults cost ~15 % of a decode on
one core (bench/README.md). :func:`tune_cpu_allocator` keeps freed memory in the process
instead, as jemalloc or tcmalloc would: large blocks come from the heap and the heap is trimmed
only past 1 GiB of free space at its top. The price is that the resident size stays near its peak
after a large step. The ``easynlp`` app calls it (``tune_allocator=false`` turns it off); in a
notebook call it once after import.

Threads: torch starts one per core, which only pays when a model's matrices are large and the
cores are free. On a shared machine a second thread that the scheduler has parked stalls every
parallel region (the README demo took ~40 s instead of ~4 s on a busy 2-core host).
:func:`set_default_threads` gives a small model one thread and a large one the cores the load
average leaves free; the ``easynlp`` command also sets ``OMP_WAIT_POLICY=PASSIVE`` before torch
is imported (waiting threads sleep instead of spinning), unless it is set already.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

import torch

logger = logging.getLogger(__name__)

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


def cpu_allocator_tuned() -> bool:
    """Whether :func:`tune_cpu_allocator` is in effect in this process."""
    return _applied


# ------------------------------------------------------------------------------------------ threads

# Below this many parameters a model's matrices are too small for a second thread to pay for its
# wake-ups: the embedded default (4 M) runs fastest on one (bench/README.md, bench/demo.py).
SMALL_MODEL_PARAMETERS = 30_000_000


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, as under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (0 where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not taken by other work: ``cores`` minus the 1-minute load average, at least one."""
    cores = available_cores() if cores is None else cores
    load = load_average() if load is None else load
    return max(1, min(cores, cores - int(load + 0.5)))


def default_num_threads(num_parameters: int, cores: int | None = None, load: float | None = None) -> int:
    """Threads for a model of ``num_parameters``: one for a small model, else the free cores."""
    if num_parameters < SMALL_MODEL_PARAMETERS:
        return 1
    return free_cores(cores, load)


def set_default_threads(model: torch.nn.Module) -> int:
    """Set torch's thread count for ``model`` (:func:`default_num_threads`) unless ``OMP_NUM_THREADS``
    chose it already; returns the count in effect. ``num_threads=N`` in the app, or
    ``torch.set_num_threads`` in a notebook, sets it yourself."""
    if os.environ.get("OMP_NUM_THREADS"):
        why = "from OMP_NUM_THREADS"
    else:
        n, cores, load = sum(p.numel() for p in model.parameters()), available_cores(), load_average()
        torch.set_num_threads(default_num_threads(n, cores, load))
        why = f"{n / 1e6:.1f}M parameters, {cores} core(s), load average {load:.1f}"
    threads = torch.get_num_threads()
    logger.info("torch threads: %d (%s; num_threads=N sets them)", threads, why)
    return threads

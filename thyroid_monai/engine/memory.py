"""Keeping freed memory mapped on CPU training (glibc's malloc), a measured 20-25% per step.

A training step on the CPU allocates and frees the same large activation and gradient buffers
every step. With glibc's defaults, buffers over the dynamic mmap threshold are mapped afresh and
unmapped on every allocation, and the top of the heap is returned to the system above 128 KiB, so
each step page-faults its whole working set in again: a quarter of the process's time was
system time in ``benchmarks/step_cost.py``. Raising the mmap threshold to its maximum (32 MiB),
the trim threshold to 2 GiB and the top pad to 1 GiB keeps the pages mapped between steps, as
PyTorch's CUDA caching allocator does on a GPU; the process then holds its peak heap until it
exits.
``benchmarks/cpu_memory.py`` measures the effect (resnet18, 256 px, batch 8, 2 threads: the
weighted-sum step 1.26 -> 0.97 s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from typing import Literal

logger = logging.getLogger(__name__)

CpuMemory = Literal["keep", "system"]
CPU_MEMORY_CHOICES = ("keep", "system")

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
_TOP_PAD = 2**30


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed memory mapped for reuse (process-wide, idempotent).

    Returns:
        Whether the settings were applied: False off Linux, with another C library, or when
        glibc refuses a value (nothing is changed then beyond what it accepted).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD),
    )
    applied = all(mallopt(parameter, value) == 1 for parameter, value in settings)
    if not applied:
        logger.warning("glibc refused a malloc setting; CPU steps keep the system allocator")
    return applied


def apply_cpu_memory(choice: str) -> bool:
    """Applies a ``cpu_memory`` choice: ``"keep"`` (:func:`keep_freed_memory`) or ``"system"``.

    Raises:
        ValueError: For another choice.
    """
    if choice not in CPU_MEMORY_CHOICES:
        raise ValueError(f"cpu_memory must be one of {CPU_MEMORY_CHOICES}, got {choice!r}")
    return keep_freed_memory() if choice == "keep" else False

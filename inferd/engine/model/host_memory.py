"""Keep freed activation memory in the process instead of handing it back to the OS after every step.

glibc's malloc serves blocks above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with fresh
`mmap`s and returns freed memory at the top of the heap to the OS beyond its trim threshold. A prefill step
allocates and frees megabytes of activations per layer, so each step page-faulted them all back in: about
385,000 minor faults per 4,096 prompt tokens on the SmolLM2-135M shape, and none with the settings below (the
same allocations then reuse the heap). Blocks of 32 MiB and more (weights, the KV cache) still get their own
mappings.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
"""Blocks at least this large are mapped on their own (glibc's upper bound for the setting)."""
TRIM_THRESHOLD = 1024 * 2**20
"""Free memory at the top of the heap kept for reuse before malloc trims it."""


def keep_freed_memory() -> bool:
    """Tune glibc's malloc (process-wide, idempotent) as the module docstring says; False where it is not
    glibc or the call fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        logger.info("malloc tuning refused; activations are page-faulted in again every step")
    return ok

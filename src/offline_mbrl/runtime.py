"""Process-level settings that make the CPU hot loop faster.

glibc hands large freed blocks straight back to the kernel, so a training step that
allocates a few megabytes of activations page-faults on every step (measured: about 430
minor faults and 1 ms of system time per population-of-6 SAC update on 2 cores). Raising
the mmap and trim thresholds keeps that memory in the process and the faults go away.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 512 * 1024 * 1024
_done = False


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed blocks (up to 512 MiB) for reuse.

    Safe to call repeatedly; a no-op (returning False) off glibc/Linux. Only the
    allocator's thresholds change, never what the program computes.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP_BYTES))
    _done = ok
    return ok

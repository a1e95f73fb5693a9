"""Process-level settings: CPU threads that share a machine gracefully, (optional)
allocator thresholds for the CPU hot loop, and whether the CPU multiplies bfloat16 itself.

OpenMP's default wait policy keeps idle worker threads spinning after every parallel
region. Alone on a machine that costs nothing; two processes that each spin on every core
(two trainings, a training beside a test suite, Ray trials) slow each other down many
times over. A short spin before idle threads sleep keeps most of the speed alone and
avoids most of the fight; ``benchmarks/oversubscription.py`` measures the policies, alone
and beside a busy neighbour.

glibc hands large freed blocks straight back to the kernel, so a training step that
allocates a few megabytes of activations page-faults on every step. Raising the mmap and
trim thresholds keeps that memory in the process; it is off by default because the same-run
A/B showed no end-to-end gain (benchmarks/README.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 512 * 1024 * 1024
_done = False


KEEP_FREED_MEMORY_FLAG = "OMBRL_KEEP_FREED_MEMORY"
"""Set to 1 to raise glibc's thresholds (off by default; see benchmarks/README.md)."""


def keep_freed_memory() -> bool:
    """With ``OMBRL_KEEP_FREED_MEMORY=1``, tell glibc's allocator to keep freed blocks (up
    to 512 MiB) for reuse.

    Safe to call repeatedly; a no-op (returning False) without the flag or off
    glibc/Linux. Only the allocator's thresholds change, never what the program computes.
    """
    global _done
    if _done:
        return True
    if os.environ.get(KEEP_FREED_MEMORY_FLAG) != "1":
        return False
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


SPIN_COUNT = "1000"
"""``GOMP_SPINCOUNT`` set at the package's import unless the user chose a spin count or a
wait policy: idle OpenMP threads spin this many times, then sleep. OpenMP reads it once,
when its runtime starts (when torch is imported), so a program that imports torch before
offline_mbrl keeps OpenMP's default."""


def set_wait_policy() -> None:
    """A short OpenMP spin before idle threads sleep, unless the user set one.

    OpenMP's default spin (300,000 rounds) keeps a process's idle threads on their cores
    between parallel regions: alone that costs nothing, beside another busy process it
    takes the cores the other one needs. A short spin keeps most of the speed alone and
    most of the passive policy's grace beside a neighbour (benchmarks/oversubscription.py).
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of x86 CPUs that multiply bfloat16 in hardware."""


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo``, or None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def slow_bfloat16_cpu() -> bool:
    """Whether this is an x86 CPU known to lack bfloat16 products (no AVX512-BF16, no AMX).

    There torch emulates bfloat16 matrix products, several times slower than float32, so
    bfloat16 saves nothing and costs much. False where it cannot tell (no ``/proc/cpuinfo``,
    other architectures).
    """
    flags = cpu_flags()
    return flags is not None and "avx2" in flags and not flags & set(BFLOAT16_CPU_FLAGS)


def bfloat16_warning(settings: dict[str, str], device_type: str) -> str | None:
    """A one-line warning when ``settings`` (flag name → dtype) ask for bfloat16 on a CPU
    that emulates it; None otherwise."""
    flags = [f"--{name} bfloat16" for name, dtype in settings.items() if dtype == "bfloat16"]
    if not flags or device_type != "cpu" or not slow_bfloat16_cpu():
        return None
    return (f"{' and '.join(flags)} on a CPU without bfloat16 products (no AVX512-BF16 or "
            "AMX): torch emulates them, many times slower than float32; drop the flag here")

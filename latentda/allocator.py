"""The C allocator's settings for tensor work on the CPU (glibc's malloc).

glibc serves a request above its mmap threshold (dynamic, from 128 KiB) with fresh pages from the
kernel and hands them back on free; it also returns the free top of its heap once that exceeds the
trim threshold. Tensor code allocates and frees buffers of megabytes at every operation, so each
new activation is page-faulted, and zeroed by the kernel, on first touch. On the 2-core machine of
docs/benchmarks.md a 3×3 convolution of 16 × 16 × 64 × 64 values after a circular padding took
7–8 ms instead of 2.5 ms, and the demo's reanalysis ran 1.3× slower, for that reason alone.

:func:`keep_freed_memory` raises both thresholds — mmap for requests above 32 MiB only (the most
glibc allows), trim once more than 1 GiB is free — so freed buffers are reused instead of faulted
in again. The peak memory of a run does not change; up to 1 GiB of freed memory stays with the
process until it exits. The command line calls it at start and every :class:`LatentDAPipeline` when
it is built, so sampling from Python gets it too; glibc's own variables, when set
(e.g. ``MALLOC_TRIM_THRESHOLD_=131072`` to keep its defaults), take precedence.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 32 << 20  # glibc refuses more than HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit machines
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (module docstring). Returns whether it did: not
    where the C library is not glibc, nor where the user set glibc's malloc variables."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

"""Process-wide performance settings that do not change results."""
from __future__ import annotations

import ctypes
import sys

_done = False


def tune_allocator() -> None:
    """Keep large tensors in glibc's heap instead of fresh mmap()s.

    glibc serves every allocation above its mmap threshold (which only adapts up to 32 MiB) with a
    new mapping and unmaps it on free, so a CNN's per-step activations (64×64×48×48 fp32 = 37 MiB)
    are page-faulted in, zeroed by the kernel, every step. Measured on the 2-core CI CPU with the
    reference CNN: training 150 -> 206 images/s, evaluation 339 -> 617 images/s. Linux/glibc only;
    elsewhere a no-op.
    """
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: leave it alone
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)

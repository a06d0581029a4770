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


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n×n fp32 matmul on the threads torch uses: the best of `reps` timed products after one
    warm-up. The ceiling that benchmarks state efficiency against, and how the budget table
    (recipes/budgets.json) converts minutes on this machine into minutes on the one it was fitted on."""
    import time

    import torch
    tune_allocator()
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9

"""Process-wide performance settings: the allocator's (results unchanged) and flushing subnormal floats to zero
(results unchanged except where a value would fall below 1.2e-38)."""
from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Iterator

import torch

_done = False


def flushing_denormals() -> bool:
    """Whether this thread flushes subnormal floats to zero now (1e-30 · 1e-9 = 1e-39 is subnormal in fp32)."""
    return float(torch.tensor(1e-30) * 1e-9) == 0.0


def flush_denormals(on: bool = True) -> bool:
    """Treat subnormal floats (|x| < 1.18e-38 in fp32) as zero in CPU arithmetic, in and out (FTZ and DAZ, as
    TensorFlow does in its own threads). An x86 core takes a microcode assist of ~100 cycles on each one, and
    training drifts into them: Fashion-MNIST diffusion (unet-fast) fell from 384 to 122 images/s over its first
    1,300 steps on the Sapphire Rapids machine, and ran 430 images/s from the same checkpoint with them flushed.

    The mode is per thread, and a thread starts with its creator's: set on the main thread before torch makes its
    OpenMP workers, it holds for all of them. So `dlforge` commands set it first thing (cli.main: the process is
    theirs); `import dlforge` does not (a library must not change a program's floating point), and the trainer
    sets it for the time of fit() and then restores it (trainer.py) — on the workers too only where torch had made
    none yet: from Python, call this before any torch work to have it everywhere. -> False where the CPU has no
    such mode (then nothing changes)."""
    return torch.set_flush_denormal(on)


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """flush_denormals() for the time of a with-block, then this thread's mode as it was (cli.main, Trainer.fit)."""
    was = flushing_denormals()
    flush_denormals()
    try:
        yield
    finally:
        flush_denormals(was)


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


def best_gflops(fn, flops: float, reps: int) -> float:
    """GFLOP/s of fn(), which does `flops` floating-point operations: the best of `reps` timed calls after one
    warm-up."""
    import time

    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n×n fp32 matmul on the threads torch uses: the best of `reps` timed products after one
    warm-up. The ceiling that benchmarks state efficiency against, and how the budget table
    (recipes/budgets.json) converts minutes on this machine into minutes on the machine of each row."""
    tune_allocator()
    a, b = torch.randn(n, n), torch.randn(n, n)
    return best_gflops(lambda: a @ b, 2 * n ** 3, reps)


def lstm_gflops(width: int = 256, batch: int = 64, steps: int = 64, reps: int = 3) -> float:
    """GFLOP/s of one fp32 LSTM layer's forward and backward (width 256, batch 64, 64 time steps: ~13 GFLOP,
    0.1-0.3 s here) on the threads torch uses, the best of `reps` after one warm-up. torch runs the layer in
    oneDNN's RNN kernels, not in MKL's matmul, and the two libraries' speeds differ by CPU: on a 2-vCPU AMD EPYC
    with AVX-512 oneDNN's GEMM ran at twice MKL's, on one with AVX2 at 0.9 of it, and the LSTM's step at 2.5–3.5×
    the time (benchmarks/gemm_backends.py). So the budget table converts its recurrent rows' minutes by this,
    not by matmul_peak."""
    tune_allocator()
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the caller's global seed stays as it was
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(width, width, batch_first=True)
    x = torch.randn(batch, steps, width, generator=g, requires_grad=True)

    def step() -> None:
        lstm(x)[0].sum().backward()
    # forward 2·(B·T)·4W·2W (input and hidden products), backward twice that
    return best_gflops(step, 3 * 2 * batch * steps * 4 * width * 2 * width, reps)


def gpt_gflops(width: int = 128, layers: int = 2, heads: int = 4, batch: int = 32, context: int = 64,
               reps: int = 3) -> float:
    """GFLOP/s of a small fp32 GPT's forward and backward (2 blocks of the budget table's gpt-s: width 128,
    4 heads, 32 windows of 64 characters; 5.3 GFLOP, about 0.08 s here) on the threads torch uses, the best of
    `reps` after one warm-up. The step mixes MKL's products with flash attention, GELU and LayerNorm, and the
    matmul peak does not predict it across CPUs: at a 2048² peak 20-33% lower, a 2-vCPU EPYC with AVX2 (Zen 3)
    made half the gpt-s steps in 10 minutes of one with AVX-512 (Zen 4). So the budget table converts its GPT rows'
    minutes by this. FLOPs counted: the matrix products (6 per parameter of the blocks and the head, per
    token) and the two attention products at full, not causal, size."""
    from dlforge.models.transformer import GPT
    tune_allocator()
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the caller's global seed stays as it was
        torch.manual_seed(0)
        model = GPT(65, context, n_layer=layers, n_head=heads, d_model=width, bias=False)
    x = torch.randint(65, (batch, context), generator=g)

    def step() -> None:
        model(x)[0].float().pow(2).mean().backward()
    tokens = batch * context
    products = 2 * tokens * (layers * 12 * width * width + width * 65) + layers * 2 * 2 * batch * context ** 2 * width
    return best_gflops(step, 3 * products, reps)

"""The same fp32 product through torch's two CPU GEMM libraries: torch.mm (MKL's sgemm, the "matmul peak" that
dlforge.perf.matmul_peak measures and the benchmarks state efficiency against) and a 1×1 convolution over an
(1, n, 1, n) input, which oneDNN computes as the same n×n×n GEMM. On an AMD EPYC with AVX-512 (a Zen 4)
oneDNN was twice as fast (benchmarks/results/gemm-backends.json), so a step whose products run in oneDNN (the
CNN's convolutions, the LSTM's cells) can exceed 100% of the torch.mm peak there; on one with AVX2 (a Zen 3,
the CI machine's kind) it was 0.8-0.95 of it (gemm-backends-epyc-avx2.json).

    flock /tmp/dlforge-cpu.lock python -m benchmarks.gemm_backends [--n 2048] [--reps 10] [--save [--out F]]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.pairs import command, cpu_name, report, save_options, saved_path
from dlforge.perf import best_gflops, lstm_gflops, matmul_peak

RESULT = Path(__file__).resolve().parent / "results" / "gemm-backends.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=10)
    save_options(ap, RESULT)
    args = ap.parse_args()
    n, flops = args.n, 2.0 * args.n ** 3
    x, w = torch.randn(1, n, 1, n), torch.randn(n, n, 1, 1)
    xc, wc = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
    result = {"benchmark": "gemm_backends", "machine": cpu_name(), "n": n, "threads": torch.get_num_threads(),
              "torch": torch.__version__,
              "torch_mm_gflops": round(matmul_peak(n, args.reps), 1),
              "onednn_conv1x1_gflops": round(best_gflops(lambda: torch.nn.functional.conv2d(x, w), flops, args.reps), 1),
              "onednn_conv1x1_channels_last_gflops": round(
                  best_gflops(lambda: torch.nn.functional.conv2d(xc, wc), flops, args.reps), 1),
              "lstm_layer_gflops": round(lstm_gflops(), 1),  # what the budget table converts LSTM rows by
              "command": command()}
    report(result, saved_path(args))


if __name__ == "__main__":
    main()

"""What dropout costs a gpt-small training step on the CPU, and what dlforge's mask saves (dlforge/models/dropout.py).

    flock /tmp/dlforge-cpu.lock python -m benchmarks.dropout --save     # -> benchmarks/results/dropout.json

1. The mask alone, forward and backward, on gpt-small's attention probabilities (32 × 4 × 128²) and on one of
   its activations (32 × 128 × 192): torch's F.dropout against dlforge's dropout.
2. A whole training step (forward, backward, fused AdamW) of gpt-small (4 × 4 × 192, context 128, batch 32):
   no dropout; dropout 0.1 as dlforge did it before (nn.Dropout, and attention through the fused kernel's own
   dropout_p: reproduced here by swapping those modules in); dropout 0.1 as dlforge does it now; dropout 0.1
   everywhere but the attention probabilities.
Medians of --steps timed repetitions after a few untimed ones; the variants take turns for --rounds rounds and
each variant's median over the rounds is reported. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dlforge.models.dropout import Dropout, dropout
from dlforge.perf import flush_denormals, matmul_peak
from dlforge.registry import create_model

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def median_ms(fn, n: int, warm: int = 3) -> float:
    ts = []
    for i in range(n + warm):
        t = time.perf_counter()
        fn()
        if i >= warm:
            ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def fused_attention(self, x, *args, **kwargs):
    """Causal self-attention as dlforge ran it before: dropout inside scaled_dot_product_attention."""
    B, T, C = x.shape
    H = self.n_heads
    q = self.q(x).view(B, T, H, C // H).transpose(1, 2)
    k, v = self.keys_values(x)
    p = self.dropout if self.training else 0.0
    return self.proj(F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True).transpose(1, 2).reshape(B, T, C))


def gpt(p: float, variant: str) -> nn.Module:
    torch.manual_seed(0)
    m = create_model("gpt-small", vocab_size=65, bias=False, dropout=p)
    if variant == "before":
        for parent in m.modules():
            for name, child in parent.named_children():
                if isinstance(child, Dropout):
                    setattr(parent, name, nn.Dropout(child.p))
        for b in m.blocks:
            b.attn.forward = types.MethodType(fused_attention, b.attn)
    elif variant == "no attention dropout":
        for b in m.blocks:
            b.attn.dropout = 0.0
    return m.train()


def step_ms(p: float, variant: str, steps: int) -> float:
    m = gpt(p, variant)
    opt = torch.optim.AdamW(m.parameters(), 2e-3, fused=True)
    x, y = torch.randint(65, (32, 128)), torch.randint(65, (32, 128))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x)[0].flatten(0, 1), y.flatten()).backward()
        opt.step()
    return median_ms(step, steps, warm=5)


def mask_ms(shape: tuple, fn, steps: int) -> float:
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    return median_ms(lambda: fn(x).backward(g), steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/dropout.json")
    args = ap.parse_args()
    flush_denormals(True)  # as dlforge train runs
    steps = {"dropout 0": (0.0, "now"), "dropout 0.1, before": (0.1, "before"), "dropout 0.1, now": (0.1, "now"),
             "dropout 0.1, none on the attention probabilities": (0.1, "no attention dropout")}
    masks = {f"{name} {shape}": (shape, fn) for shape in [(32, 4, 128, 128), (32, 128, 192)]
             for name, fn in [("F.dropout", lambda x: F.dropout(x, 0.1)), ("dlforge dropout", lambda x: dropout(x, 0.1))]}
    runs: dict[str, list[float]] = {k: [] for k in [*masks, *steps]}
    peaks = []
    for r in range(args.rounds):
        peaks.append(matmul_peak(2048, 10))
        for k, (shape, fn) in masks.items():
            runs[k].append(mask_ms(shape, fn, args.steps))
        for k, (p, variant) in steps.items():
            runs[k].append(step_ms(p, variant, args.steps))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in runs.items()), flush=True)
    out = {"benchmark": "dropout", "command": " ".join(["python -m benchmarks.dropout", *sys.argv[1:]]),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "fp32_matmul_peak_gflops": [round(x, 1) for x in peaks],
           "ms": {k: {"median": round(statistics.median(v), 2), "values": [round(x, 2) for x in v]} for k, v in runs.items()}}
    print(json.dumps(out))
    if args.save:
        (RESULTS / "dropout.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

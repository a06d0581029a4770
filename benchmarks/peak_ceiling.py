"""How near the matmul peak can a training step get here? The share of the fp32 matmul peak that each kind of
kernel reaches inside dlforge's real training steps, and the share of the step's time each kind takes.

    flock /tmp/dlforge-cpu.lock python -m benchmarks.peak_ceiling --save     # cnn and gpt-small, ~2 minutes
    python -m benchmarks.peak_ceiling --ab 5 --steps 10 --save --out X.json  # the cnn step, oneDNN's conv weight
                                                                              # gradients against dlforge's
    python -m benchmarks.peak_ceiling --ab 5 --ab-switch ema --steps 10      # the cnn step without and with the
                                                                              # moving average of the weights
    python -m benchmarks.peak_ceiling --ab 5 --ab-switch channels-last --steps 5  # the unet-fast text-to-image
                                                                              # step, NCHW against channels-last

Issue 20 part 3 asks for CNN training at >= 85% of the 2048² fp32 matmul peak, CNN evaluation at >= 90% and the
GPT training step at >= 80%. A step is FLOPs / seconds; its FLOPs are almost all in convolutions and matrix
products, and those are oneDNN's and MKL's kernels, not dlforge's. So a step cannot beat the share its own
kernels reach on its own shapes, and every other op (ReLU, pooling, dropout, LayerNorm, softmax, GELU, the
optimiser) only adds time. This benchmark measures both inside the step:

- FLOPs by aten op: torch.utils.flop_counter.FlopCounterMode over one step, CPU attention included
  (benchmarks.pairs.flop_counter);
- time by aten op: torch.profiler over `--steps` steps (self CPU time), after 3 warm-up steps;
- for each FLOP-counted op: its GFLOP/s and share of the peak (the kernel's ceiling on these shapes);
- the whole step without the profiler, timed alone: its share of the peak, as the side-by-side benchmarks
  measure it; and the step's share if everything but the FLOP-counted kernels took no time at all.

The steps are the recipes' own: `cnn` (MY_NET) on 3 × 48 × 48 channels-last images, batch 64, Adam (fused), the
dropout of the reference, the update of the moving average of the weights (--ema-decay 0.999); `gpt-small` (4 × 4 × 192, no biases) on 32 windows of 128, AdamW (fused), clip 1; and
the cnn's evaluation forward at batch 256 under inference mode. Data are random tensors of the recipes' shapes:
kernel speed does not depend on the values. The matmul peak is measured before each model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.pairs import command, cpu_name, flop_counter, matmul_peak, report, save_options, saved_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cnn_step() -> tuple[Callable[[], None], str]:
    from dlforge.recipes.classify import EMA_DECAY
    from dlforge.registry import create_model
    from dlforge.train.tasks import ClassifyTask
    model = create_model("cnn", in_channels=3, img_size=48, num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-4, fused=True)
    task = ClassifyTask(num_classes=10, ema_decay=EMA_DECAY)  # the trainer calls its after_step after each step
    x = torch.randn(64, 3, 48, 48).to(memory_format=torch.channels_last)
    y = torch.randint(10, (64,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        task.after_step(model)
    step.task = task  # type: ignore[attr-defined]  (--ab-switch ema turns its average off and on)
    return step, f"cnn train: batch 64, 3 x 48 x 48, channels-last, Adam, weight average {EMA_DECAY}"


def cnn_eval() -> tuple[Callable[[], None], str]:
    from dlforge.registry import create_model
    model = create_model("cnn", in_channels=3, img_size=48, num_classes=10).to(memory_format=torch.channels_last)
    model.eval()
    x = torch.randn(256, 3, 48, 48).to(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode():
            model(x)
    return step, "cnn eval: batch 256, 3 x 48 x 48, channels-last, inference mode"


def gpt_step() -> tuple[Callable[[], None], str]:
    from dlforge.registry import create_model
    model = create_model("gpt-small", vocab_size=65, block_size=128, bias=False)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, betas=(0.9, 0.99), weight_decay=0.0, fused=True)
    x = torch.randint(65, (32, 128))
    y = torch.randint(65, (32, 128))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step, "gpt-small train: 4 x 4 x 192, batch 32 x 128, AdamW, clip 1"


def unet_step(channels_last: bool) -> tuple[Callable[[], None], str]:
    """The `unet-fast` text-to-image training step as `dlforge train unet-fast --data fashion-mnist` takes it at
    batch 256: DenoiseTask's loss (t, ε, Min-SNR weights, caption dropout), AdamW (fused), clip 1, the moving
    average; captions of 16 token ids from a vocabulary of 34, as the Fashion-MNIST captions have."""
    from dlforge.registry import create_model
    from dlforge.train.tasks import DenoiseTask
    torch.manual_seed(0)
    model = create_model("unet-fast", vocab_size=34, img_size=28, max_len=16, in_channels=1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=0.0, fused=True)
    task = DenoiseTask()
    x0 = (torch.rand(256, 1, 28, 28) * 2 - 1).contiguous(memory_format=fmt)
    cond = torch.randint(1, 34, (256, 16))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        task.step(model, (x0, cond))[0].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        task.after_step(model)
    return step, f"unet-fast train: batch 256, 1 x 28 x 28, {'channels-last' if channels_last else 'NCHW'}, AdamW, clip 1"


def flops_by_op(step: Callable[[], None]) -> dict[str, float]:
    with flop_counter() as fc:
        step()
    return {str(op).removeprefix("aten."): float(n) for op, n in fc.get_flop_counts()["Global"].items()}


def time_by_op(step: Callable[[], None], steps: int) -> dict[str, float]:
    """Self CPU seconds per step of each aten op (top-level and nested), over `steps` profiled steps."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    out: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        out[e.key.removeprefix("aten::")] += e.self_cpu_time_total / 1e6 / steps
    return dict(out)


def kernel_of(flop_op: str, times: dict[str, float]) -> list[str]:
    """The profiler's names for the kernels behind one of FlopCounterMode's ops: the op itself, and for a
    convolution what its CPU implementation dispatches to (oneDNN)."""
    names = {"convolution": ["mkldnn_convolution", "convolution", "_convolution", "conv2d"],
             "convolution_backward": ["convolution_backward", "mkldnn_convolution_backward"]}.get(flop_op, [flop_op])
    return [n for n in names if n in times]


def measure(name: str, make: Callable[[], tuple[Callable[[], None], str]], steps: int) -> dict:
    torch.manual_seed(0)
    step, what = make()
    for _ in range(3):
        step()
    peak = matmul_peak()
    flops = flops_by_op(step)
    total_flops = sum(flops.values())
    # the step alone, no profiler: best of 3 means of `steps` steps
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - t) / steps)
    times = time_by_op(step, steps)
    profiled = sum(times.values())
    kernels, kernel_s = {}, 0.0
    for op, n in sorted(flops.items(), key=lambda kv: -kv[1]):
        t = sum(times[k] for k in kernel_of(op, times))
        if t <= 0:
            continue
        kernel_s += t
        kernels[op] = {"gflop": round(n / 1e9, 3), "ms": round(1e3 * t, 2),
                       "percent_of_peak": round(100 * n / t / 1e9 / peak, 1),
                       "percent_of_step_time": round(100 * t / profiled, 1)}
    others = sorted(((k, v) for k, v in times.items() if v > 0), key=lambda kv: -kv[1])
    counted = {k for op in flops for k in kernel_of(op, times)}
    rest = [(k, round(1e3 * v, 2)) for k, v in others if k not in counted]
    return {"model": name, "what": what, "steps": steps, "fp32_matmul_peak_gflops": round(peak, 1),
            "gflop_per_step": round(total_flops / 1e9, 3), "ms_per_step": round(1e3 * best, 2),
            "percent_of_peak": round(100 * total_flops / best / 1e9 / peak, 1),
            "percent_of_peak_if_only_the_kernels_took_time": round(100 * total_flops / kernel_s / 1e9 / peak, 1),
            "kernels_share_of_profiled_time": round(100 * kernel_s / profiled, 1),
            "kernels": kernels,
            "largest_other_ops_ms": dict(rest[:12])}


def _set_conv(step, on: bool) -> None:
    import dlforge.models.conv as conv
    conv.gemm_weight_grad = lambda: on  # conv2's and conv3's weight gradients: the one switch


def _set_ema(step, on: bool) -> None:
    from dlforge.recipes.classify import EMA_DECAY
    step.task.ema_decay = EMA_DECAY if on else 0.0  # 0: after_step returns at once


def _pair_of_unet_steps() -> tuple[Callable[[], None], str]:
    """Two unet-fast steps, NCHW and channels-last (the same initial weights), one of them run at a time."""
    (off, what), (on, _) = unet_step(False), unet_step(True)

    def step() -> None:
        step.current()  # type: ignore[attr-defined]
    step.off, step.on, step.current = off, on, off  # type: ignore[attr-defined]
    return step, what.replace("NCHW", "NCHW or channels-last")


def _set_channels_last(step, on: bool) -> None:
    step.current = step.on if on else step.off


# --ab-switch: (name of the step without, name with, how to set it, the step's model, the step)
SWITCHES = {"conv-weight-grad": ("onednn", "gemm", _set_conv, "cnn-train", cnn_step),
            "ema": ("no-average", "average", _set_ema, "cnn-train", cnn_step),
            "channels-last": ("nchw", "channels-last", _set_channels_last, "unet-train", _pair_of_unet_steps)}


def ab(steps: int, rounds: int, switch: str) -> dict:
    """A training step without and with one thing (SWITCHES: for the cnn step, dlforge's product for conv2's and
    conv3's weight gradients instead of oneDNN's, or the moving average of the weights; for the unet-fast step,
    channels-last memory), alternated in one process: `rounds` pairs of `steps` steps, each pair's ratio of the
    step's time without to with."""
    import statistics
    torch.manual_seed(0)
    off_name, on_name, setter, model, make = SWITCHES[switch]
    step, what = make()
    ms: dict[str, list[float]] = {off_name: [], on_name: []}
    peaks = []
    for r in range(rounds + 1):  # the first round warms up both
        peaks.append(matmul_peak())
        for name, on in ((off_name, False), (on_name, True)):
            setter(step, on)
            t = time.perf_counter()
            for _ in range(steps):
                step()
            if r:
                ms[name].append(1e3 * (time.perf_counter() - t) / steps)
    ratios = [a / b for a, b in zip(ms[off_name], ms[on_name])]
    return {"model": model, "what": what, "switch": switch, "steps": steps, "rounds": rounds,
            "fp32_matmul_peak_gflops": [round(p, 1) for p in peaks[1:]],
            "ms_per_step": {k: [round(x, 1) for x in v] for k, v in ms.items()},
            "median_ms_per_step": {k: round(statistics.median(v), 1) for k, v in ms.items()},
            f"speedup_of_{on_name.replace('-', '_')}": {"median": round(statistics.median(ratios), 3),
                                                         "min": round(min(ratios), 3), "max": round(max(ratios), 3)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="steps per timing (default 20)")
    ap.add_argument("--models", nargs="+", default=["cnn-train", "cnn-eval", "gpt-train"],
                    choices=["cnn-train", "cnn-eval", "gpt-train"])
    ap.add_argument("--conv-weight-grad", choices=["gemm", "onednn"], default="gemm",
                    help="the cnn's conv2/conv3 weight gradients: dlforge's im2col product (default, as trained) or "
                         "oneDNN's, as before (dlforge.models.conv)")
    save_options(ap, RESULTS / "peak-ceiling.json")
    ap.add_argument("--ab", type=int, metavar="ROUNDS", help="instead: a training step without and with "
                    "--ab-switch alternated, ROUNDS pairs of --steps steps")
    ap.add_argument("--ab-switch", choices=sorted(SWITCHES), default="conv-weight-grad",
                    help="with --ab: the cnn step with oneDNN's convolution weight gradients against dlforge's "
                         "(default), or without and with the moving average of the weights; or the unet-fast step "
                         "in NCHW against channels-last memory (channels-last)")
    args = ap.parse_args()
    if args.steps < 1:
        sys.exit("--steps: expected 1 or more")
    if args.ab is not None:
        if args.ab < 1:
            sys.exit("--ab: expected 1 or more rounds")
        result = {"benchmark": "peak_ceiling --ab", "command": command(),
                  "machine": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "rows": [ab(args.steps, args.ab, args.ab_switch)]}
        report(result, saved_path(args))
        return
    if args.conv_weight_grad == "onednn":
        import dlforge.models.conv
        dlforge.models.conv.gemm_weight_grad = lambda: False  # every convolution falls back to torch's own
    makers = {"cnn-train": cnn_step, "cnn-eval": cnn_eval, "gpt-train": gpt_step}
    rows = []
    for name in args.models:
        rows.append(measure(name, makers[name], args.steps))
        print(json.dumps(rows[-1]), file=sys.stderr)
    result = {"benchmark": "peak_ceiling", "command": command(),
              "machine": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "conv_weight_grad": args.conv_weight_grad, "rows": rows}
    report(result, saved_path(args))


if __name__ == "__main__":
    main()

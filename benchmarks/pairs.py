"""What every side-by-side benchmark shares: runs interleaved A B A B, the median with its spread, and the
fp32 matmul peak measured in the same run. And what every benchmark shares: the FLOP count that a share of that
peak divides by (flop_counter), the machine's name (cpu_name), and --save/--out (save_options, saved_path,
report).

One-off ratios do not hold on a shared machine: the same CNN benchmark gave 2.18x, 1.37x and 1.54x on three
days, and the 2048² matmul 179, 101.7 and 149.4 GFLOP/s. So a benchmark runs its peer and dlforge one after
the other, several pairs of shorter runs, measures the matmul peak before each pair, and reports the ratio of
each pair and the share of that pair's peak, as median (min–max). Drift of the machine falls on both sides.
"""
from __future__ import annotations

import argparse
import json
import shlex
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """'<vCPUs> × <model name>, <widest vector ISA>' from /proc/cpuinfo (else what platform knows): which machine
    a result is from. A cloud CPU's name can hide its generation ('AMD EPYC' is a Zen 3 with AVX2 on one machine
    and a Zen 4 with AVX-512 on another, and their GEMM speeds differ by up to 2×), so the ISA is part of it."""
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
        return f"{len(names)} × {names[0]}" + (f", {isa}" if isa else "")
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def spread(xs: list[float], digits: int = 3) -> dict:
    """{"median", "min", "max", "values"} of a list of measurements."""
    return {"median": round(statistics.median(xs), digits), "min": round(min(xs), digits),
            "max": round(max(xs), digits), "values": [round(x, digits) for x in xs]}


def matmul_peak() -> float:
    """dlforge.perf.matmul_peak, best of 10: the 2048² fp32 matmul GFLOP/s that 'share of peak' is measured against."""
    from dlforge.perf import matmul_peak as peak
    return peak(2048, 10)


def save_options(ap, default: Path, work: str | None = None) -> None:
    """A benchmark's --save and --out, `default` the file --save writes: a run without them only prints its result,
    so that trying a benchmark leaves the committed results alone. --out alone also saves: a command that names a
    file and writes nothing (as `--out` without `--save` once did) loses the run it was made for. `work`: the
    default of --work, the folder for a benchmark's own runs and data, where it has one (it was --out once, so an
    --out that is not a .json file is refused before any work, naming --work)."""
    shown = default.relative_to(ROOT) if default.is_relative_to(ROOT) else default
    hint = " (the folder for the benchmark's own runs and data is --work)" if work else ""

    def results_file(value: str) -> Path:
        if not value.endswith(".json") or Path(value).is_dir():
            raise argparse.ArgumentTypeError(f"expected the results file, a .json, got {value!r}{hint}")
        return Path(value)

    ap.add_argument("--save", action="store_true", help=f"also write the JSON to --out (default {shown})")
    ap.add_argument("--out", type=results_file, help="write the JSON to this .json file instead (implies --save): "
                                                     "e.g. another machine's run, kept beside the default's")
    if work:
        ap.add_argument("--work", type=Path, default=Path(work),
                        help=f"the folder for the benchmark's own runs and data (default {work})")
    ap.set_defaults(save_default=default)


def saved_path(args, default: Path | None = None) -> Path | None:
    """Where save_options' --save and --out write the result: --out, else with --save the default (save_options'
    unless the result names its own, e.g. by sub-command), else nowhere."""
    path = args.out or ((default or args.save_default) if args.save else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def command() -> str:
    """The command line that ran this benchmark, to reproduce it: `python -m benchmarks.NAME` and its arguments
    as given (quoted for a shell). Hand-written commands dropped some (--models, --n, --reps)."""
    return shlex.join(["python", "-m", f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]])


def report(result: dict, path: Path | None, indent: int = 1) -> None:
    """Print a benchmark's result as one line of JSON, the last on stdout; and write it to `path` (saved_path:
    --save, --out) when there is one."""
    if path is not None:
        path.write_text(json.dumps(result, indent=indent) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(result), flush=True)


def flop_counter():
    """torch's FlopCounterMode, also counting CPU attention. torch has FLOP formulas for its GPU attention
    kernels only, so on a CPU a Transformer's attention (`_scaled_dot_product_flash_attention_for_cpu` and its
    backward: about 5% of gpt-small's step) counted as nothing, and its share of the peak read low. Counted
    here as the same attention written out is counted (q @ k^T, softmax, @ v): two products forward and four
    backward. Not torch's GPU formula for the backward, which adds a fifth, the scores that flash attention
    computes again: that is the kernel's choice, not the model's work. And for causal attention only the
    products it needs, the lower triangle with its diagonal ((T+1)/2T of them), as the CPU kernel skips the
    blocks above it. Conventions that count the full square (nanoGPT's MFU, PaLM's) give more FLOPs for the
    same step, so a higher share."""
    import torch
    from torch.utils import flop_counter as fcm
    aten = torch.ops.aten

    def causal(q_shape, k_shape, is_causal: bool) -> float:
        t_q, t_k = q_shape[-2], k_shape[-2]
        return (t_q + 1) / (2 * t_k) if is_causal and t_q == t_k else 1.0

    def forward(q, k, v, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs) -> int:
        return round(fcm.sdpa_flop_count(q, k, v) * causal(q, k, is_causal))

    def backward(grad, q, k, v, out, lse, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs) -> int:
        return round(2 * fcm.sdpa_flop_count(q, k, v) * causal(q, k, is_causal))
    return fcm.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})


def interleave(first: tuple[str, Callable[[], dict]], second: tuple[str, Callable[[], dict]], pairs: int,
               log: Callable[[str], None] = print) -> list[dict]:
    """Run first, second, first, second, ... `pairs` times, the matmul peak measured before each pair.
    -> one dict per pair: {"peak_gflops": ..., <first name>: its result, <second name>: its result}."""
    if pairs < 1:
        raise SystemExit("--pairs: expected 1 or more")
    out = []
    for i in range(pairs):
        row = {"peak_gflops": round(matmul_peak(), 1)}
        for name, run in (first, second):
            t = time.perf_counter()
            row[name] = run()
            log(f"pair {i + 1}/{pairs}: {name} done in {time.perf_counter() - t:.0f} s: {row[name]}")
        out.append(row)
    return out


def train_cli(argv: list[str], out: Path, entry: tuple = ("-m", "dlforge")) -> tuple[dict, dict, float]:
    """`dlforge train ARGV --out OUT --json --no-progress` in a subprocess, as a user runs it (entry: how
    Python starts dlforge's CLI: a benchmark may pass a module of its own that patches dlforge first).
    -> (its JSON report, the last checkpoint's metadata: step, elapsed, ...), wall seconds); a failure exits
    with the command and the end of its stderr."""
    from dlforge.train.checkpoint import load_checkpoint
    cmd = [sys.executable, *(entry or ("-m", "dlforge")), "train", *argv, "--out", str(out), "--json", "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    meta = load_checkpoint(out / "checkpoints" / "last.safetensors")[1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), meta, time.perf_counter() - t0

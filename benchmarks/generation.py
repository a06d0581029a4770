"""Generation speed of every GPT size at batch 1: tokens/s with and without the key/value cache.

    python -m benchmarks.generation --save                 # gpt-tiny, gpt-small, gpt: 500 tokens, 3 pairs
    python -m benchmarks.generation --models gpt-small --pairs 5 --threads 2
    python -m benchmarks.generation --run runs/gpt-small-tinyshakespeare   # a trained run's model
    python -m benchmarks.generation --profile              # where a cached step's time goes (torch.profiler)

The models are the registered sizes with random weights (seed 0; speed does not depend on the weights), a
vocabulary of 65 (char-level tinyshakespeare) and their registered context; a 6-token prompt, temperature 1,
seeded sampling: dlforge.models.sampling.generate_ids, what `dlforge generate` and the handle run. Each size
runs cached and uncached alternately (A B A B ...), --pairs times, so that the machine's drift falls on both;
reported: the median and min–max of tokens/s, and of the speed-up of each pair. Run it alone (under
`flock /tmp/dlforge-cpu.lock` on a shared machine): it measures the whole machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from dlforge.recipes.language_model import generate_ids  # the handle's loop (dlforge.models.sampling)
from dlforge.registry import create_model
from benchmarks.pairs import command, cpu_name, report, save_options, saved_path, spread

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = ("gpt-tiny", "gpt-small", "gpt")


def _tokens_per_s(model, prompt, tokens: int, cache: bool) -> float:
    t0 = time.perf_counter()
    n = sum(1 for _ in generate_ids(model, prompt, tokens, 1.0, seed=0, use_cache=cache))
    return n / (time.perf_counter() - t0)


def measure(label: str, model: torch.nn.Module, tokens: int, pairs: int) -> dict:
    torch.manual_seed(0)
    prompt = torch.randint(model.head.out_features, (1, 6))
    for cache in (True, False):  # warm-up: first calls allocate and pick kernels
        _tokens_per_s(model, prompt, 20, cache)
    cached, uncached = [], []
    for _ in range(pairs):
        cached.append(_tokens_per_s(model, prompt, tokens, True))
        uncached.append(_tokens_per_s(model, prompt, tokens, False))
    b = model.blocks[0].attn
    return {"model": label, "layers": len(model.blocks), "heads": b.n_heads, "width": b.q.in_features,
            "block_size": model.block_size, "parameters": sum(p.numel() for p in model.parameters()),
            "new_tokens": tokens, "pairs": pairs,
            "cache_tokens_per_s": spread(cached), "no_cache_tokens_per_s": spread(uncached),
            "cache_ms_per_token": 1000 / statistics.median(cached),
            "speedup": spread([c / u for c, u in zip(cached, uncached)])}


def profile(label: str, model: torch.nn.Module, steps: int = 100) -> None:
    """torch.profiler over `steps` cached steps at half the context (one token each, sampling excluded)."""
    from torch.profiler import ProfilerActivity, profile as prof
    dec, x = model.decoder(), torch.zeros(1, 1, dtype=torch.long)
    half = model.block_size // 2
    with torch.inference_mode():
        dec(torch.zeros(1, half, dtype=torch.long))

        def step():
            dec.cache.lengths = [half] * len(dec.cache.lengths)
            dec(x)
        for _ in range(20):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(steps):
                step()
    print(f"\n{label}: a cached step takes {wall * 1e6:.0f} us (without the profiler)")
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def _load_run(run: Path) -> tuple[str, torch.nn.Module]:
    import dlforge
    return f"{run} (trained)", dlforge.load(run).model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(SIZES), choices=SIZES)
    ap.add_argument("--run", type=Path, help="a trained gpt run instead of the random-weight sizes")
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--pairs", type=int, default=3, help="cached/uncached pairs per size "
                                                           "(3 or more for a reported figure; fewer for a quick try)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--profile", action="store_true", help="print where a cached step's time goes instead")
    save_options(ap, RESULTS / "lm-generate-cache.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [_load_run(args.run)] if args.run else [
        (name, (torch.manual_seed(0), create_model(name, vocab_size=65))[1].eval()) for name in args.models]
    if args.profile:
        for label, model in models:
            profile(label, model)
        return
    load = os.getloadavg()[0]
    res = {"benchmark": f"batch-1 generation, {args.tokens} new tokens, with and without the KV cache",
           "command": command(),
           "weights": "trained" if args.run else "random (seed 0): speed does not depend on the weights",
           "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                       "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average_1min": load},
           "results": [measure(label, model, args.tokens, max(1, args.pairs)) for label, model in models]}
    report(res, saved_path(args), indent=2)


if __name__ == "__main__":
    main()

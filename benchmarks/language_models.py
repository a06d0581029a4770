"""Language models on char-level tinyshakespeare: quality in a fixed time, throughput.

    python -m benchmarks.language_models train gpt            # 10 minutes of training, the gpt recipe
    python -m benchmarks.language_models train lstm           # ... the lstm recipe
    python -m benchmarks.language_models throughput gpt lstm  # tokens/s fp32 and bf16, achieved GFLOP/s

Generation speed (every GPT size, with and without the KV cache) is benchmarks/generation.py.

Each prints one JSON object (and, with --save, writes it to benchmarks/results/). `train` runs the real
command line (`dlforge train ... --max-time M --json`) in a subprocess and reads the run directory.
Run them one at a time: they measure the whole machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.pairs import command, flop_counter, report, train_cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The 10-minute recipes (2 CPU cores). Cosine decay follows --max-time, so it ends at the budget's end.
RECIPES = {
    "gpt": ["gpt-small", "--block-size", "128", "--batch-size", "32", "--lr", "2e-3", "--beta2", "0.99",
            "--weight-decay", "0", "--lr-schedule", "cosine", "--warmup-steps", "50", "--grad-clip", "1.0",
            "--eval-every", "100", "--eval-tokens", "32768"],
    "lstm": ["lstm", "--width", "512", "--layers", "1", "--block-size", "64", "--batch-size", "128", "--lr", "3e-3",
             "--beta2", "0.99", "--weight-decay", "0", "--lr-schedule", "cosine", "--warmup-steps", "20",
             "--grad-clip", "1.0", "--eval-every", "50", "--eval-tokens", "32768"],
}


def _recipe_kwargs(recipe: list[str]) -> tuple[str, dict, int, int]:
    """-> (model name, model kwargs, batch size, block size) of a recipe, as the CLI would build them."""
    from dlforge.cli import parser
    args = vars(parser().parse_args(["train", *recipe]))  # `train` leaves out the options not given (SUPPRESS)
    kw = {k: args[o] for k, o in (("n_layer", "layers"), ("n_head", "heads"), ("d_model", "width"),
                                  ("dropout", "dropout")) if args.get(o) is not None}
    return args["model"], kw, args["batch_size"], args["block_size"]


def train(name: str, minutes: float, out: Path, extra: list[str]) -> dict:
    argv = [*RECIPES[name], *extra, "--data", "tinyshakespeare", "--tokenizer", "char", "--max-time", str(minutes),
            "--epochs", "1000"]
    report, meta, wall = train_cli(argv, out)
    model, kw, batch, block = _recipe_kwargs(RECIPES[name])
    tokens = meta["step"] * batch * block
    return {"benchmark": f"{name} char-level tinyshakespeare, {minutes} min", "command": "dlforge train " + " ".join(argv),
            "best_val_loss_full_validation": report["loss"], "val_perplexity": report["perplexity"],
            "val_bpc": report["bpc"], "best_val_loss_during_training": report["best_val_loss_during_training"],
            "steps": meta["step"], "train_tokens": tokens, "train_seconds": meta["elapsed"],
            "train_tokens_per_s": tokens / meta["elapsed"], "wall_seconds": wall,
            "run": str(out), "sample": _sample(out)}


def _sample(run: Path) -> str:
    import dlforge
    return dlforge.load(run).generate("ROMEO:", 300, temperature=0.8, seed=0)


def throughput(name: str, steps: int, precision: str) -> dict:
    """Training steps/s of the recipe's model on random tokens (the data pipeline is negligible), and
    achieved GFLOP/s = FLOPs of one step counted by FlopCounterMode (benchmarks.pairs.flop_counter) / measured step time."""
    import torch
    import torch.nn.functional as F
    from dlforge.registry import create_model
    from dlforge.train.trainer import autocast
    model_name, kw, B, T = _recipe_kwargs(RECIPES[name])
    torch.manual_seed(0)
    model = create_model(model_name, vocab_size=65, block_size=T, **kw)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
    x, y = torch.randint(65, (B, T)), torch.randint(65, (B, T))

    def step():
        with autocast(precision, torch.device("cpu")):
            logits, _ = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with flop_counter() as fc:
        step()
    flops = fc.get_total_flops() + _recurrent_flops(model, B * T)
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    return {"model": name, "precision": precision, "batch": [B, T], "tokens_per_s": B * T / dt,
            "step_seconds": dt, "gflop_per_step": flops / 1e9, "achieved_gflop_s": flops / dt / 1e9,
            "threads": torch.get_num_threads()}


def _recurrent_flops(model, tokens: int) -> int:
    """FlopCounterMode does not see inside the fused RNN/LSTM/GRU kernels: count their matmuls,
    2·gates·H·(E_l + H) per token and layer forward, ×3 with the backward pass."""
    rnn = getattr(model, "rnn", None)
    if rnn is None:
        return 0
    gates = {"LSTM": 4, "GRU": 3}.get(type(rnn).__name__, 1)
    H, per_token = rnn.hidden_size, 0
    for layer in range(rnn.num_layers):
        per_token += 2 * gates * H * ((rnn.input_size if layer == 0 else H) + H)
    return 3 * per_token * tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("model", choices=sorted(RECIPES))
    t.add_argument("--minutes", type=float, default=10.0)
    t.add_argument("--out", type=Path)
    t.add_argument("extra", nargs="*", help="more dlforge train options (after --)")
    p = sub.add_parser("throughput")
    p.add_argument("models", nargs="+", choices=sorted(RECIPES))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bf16-steps", type=int, default=1)
    ap.add_argument("--save", action="store_true", help="also write the JSON to benchmarks/results/")
    args = ap.parse_args()
    if args.what == "train":
        res = train(args.model, args.minutes, args.out or ROOT / "runs" / f"bench-{args.model}", args.extra)
    else:
        res = {"throughput": [throughput(m, s, prec) for m in args.models
                              for prec, s in (("fp32", args.steps), ("bf16", args.bf16_steps))]}
    res = {**res, "command": command()}
    tag = args.what + ("-" + args.model if args.what == "train" else "")
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
    report(res, RESULTS / f"lm-{tag}.json" if args.save else None, indent=2)


if __name__ == "__main__":
    main()

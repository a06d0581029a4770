"""dlforge's GPT against nanoGPT (github.com/karpathy/nanoGPT), side by side on char-level tinyshakespeare.

The recipe is `gpt-small`'s 10-minute one, run by steps: 4 layers × 4 heads × 192 wide, context 128, batch 32,
AdamW lr 2e-3 with 50 warm-up steps and a cosine to 2e-4, β2 0.99, no weight decay, gradient clip 1, no
dropout, no biases (nanoGPT's default bias=False; dlforge's --no-bias), fp32 on the CPU, nanoGPT with
--compile=False (its README's CPU recipe).

    python -m benchmarks.gpt_vs_nanogpt steps --save     # training step time, 3 interleaved pairs of 100 steps
    python -m benchmarks.gpt_vs_nanogpt quality --save   # 1,574 steps: nanoGPT, then dlforge seeds 0 and 1
    python -m benchmarks.gpt_vs_nanogpt quality --seeds --nanogpt-seeds 1 --save   # another nanoGPT seed, kept beside

steps: nanoGPT then dlforge, --pairs times (benchmarks/pairs.py), the fp32 matmul peak measured before each
pair. Step time: nanoGPT's own per-iteration log without its first 10 steps, dlforge's training clock over all
its steps (its first steps count: slightly against dlforge). Neither includes start-up or evaluation. The ratio of each pair, and dlforge's share of that pair's peak (FLOPs of one step counted by
FlopCounterMode), as median (min–max).

quality: both checkpoints after 1,574 steps scored by one evaluator, dlforge's full-validation loss
(lm_loss: non-overlapping windows of 128 over the whole last 10% of the text; nanoGPT's weights are loaded into
dlforge's GPT, the same arithmetic), each on its own script's validation split (nanoGPT's is one character
longer).

nanoGPT's code comes from $NANOGPT (a checkout), else from the snapshot the library's `fetch` leaves in
/work/.mirror/karpathy+nanoGPT/repo; it is run as it is, from a copy in a temporary folder, by this Python.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.pairs import interleave, spread, train_cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MIRROR = Path("/work/.mirror/karpathy+nanoGPT/repo")
SHAPE = {"n_layer": 4, "n_head": 4, "d_model": 192, "block_size": 128, "batch": 32}
DLFORGE = ["gpt-small", "--block-size", "128", "--batch-size", "32", "--lr", "2e-3", "--beta2", "0.99",
           "--weight-decay", "0", "--lr-schedule", "cosine", "--warmup-steps", "50", "--grad-clip", "1.0",
           "--no-bias", "--data", "tinyshakespeare", "--tokenizer", "char", "--epochs", "1000", "--json",
           "--no-progress"]
NANOGPT = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--dtype=float32",
           "--block_size=128", "--batch_size=32", "--n_layer=4", "--n_head=4", "--n_embd=192", "--dropout=0.0",
           "--bias=False", "--learning_rate=2e-3", "--min_lr=2e-4", "--warmup_iters=50", "--beta2=0.99",
           "--weight_decay=0.0", "--grad_clip=1.0", "--log_interval=1", "--always_save_checkpoint=True"]


def nanogpt_tree(work: Path) -> Path:
    """A runnable copy of nanoGPT with data/shakespeare_char prepared by its own prepare.py (the corpus file is
    dlforge's verified copy, so prepare.py never downloads)."""
    from dlforge.data.text import named_corpus_file
    tree = work / "nanoGPT"
    if not tree.exists():
        src = Path(os.environ.get("NANOGPT", MIRROR))
        if (src / "train.py").is_file():
            subprocess.run(["cp", "-r", str(src), str(tree)], check=True)
        elif (src / "HEAD").is_file():  # a bare snapshot: export its tree
            tree.mkdir(parents=True)
            archive = subprocess.run(["git", "--git-dir", str(src), "archive", "HEAD"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        else:
            sys.exit(f"nanoGPT not found: set NANOGPT to a checkout of github.com/karpathy/nanoGPT (tried {src})")
    data = tree / "data" / "shakespeare_char"
    if not (data / "val.bin").exists():
        (data / "input.txt").write_bytes(named_corpus_file("tinyshakespeare").read_bytes())
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return tree


def nanogpt_seeded(tree: Path, seed: int) -> Path:
    """nanoGPT seeds torch with 1337 (+ the DDP rank) in train.py, not from its config: seed s > 0 runs a copy
    whose train.py seeds 1337 + s (its initialisation and its batches both follow that seed)."""
    if seed == 0:
        return tree
    copy = tree.with_name(f"{tree.name}-seed{seed}")
    if not copy.exists():
        subprocess.run(["cp", "-r", str(tree), str(copy)], check=True)
        train = copy / "train.py"
        text = train.read_text()
        line = "torch.manual_seed(1337 + seed_offset)"
        if line not in text:
            sys.exit(f"nanoGPT's train.py no longer has {line!r}: cannot set its seed")
        train.write_text(text.replace(line, f"torch.manual_seed(1337 + {seed} + seed_offset)"))
    return copy


def run_nanogpt(tree: Path, steps: int, out: Path, eval_iters: int = 20) -> dict:
    """nanoGPT's train.py for `steps` updates; -> its per-iteration times and loss, the checkpoint path."""
    cmd = [sys.executable, "train.py", *NANOGPT, f"--max_iters={steps}", f"--lr_decay_iters={steps}",
           f"--eval_interval={steps}", f"--eval_iters={eval_iters}", f"--out_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"nanoGPT failed:\n{proc.stderr[-3000:]}")
    iters = [(int(i), float(ms)) for i, ms in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", proc.stdout)]
    # iteration 0 carries the first evaluation, and the last one the final evaluation: left out
    times = [ms for i, ms in iters if 10 <= i < steps]
    return {"ms_per_step": sum(times) / len(times), "steps": steps, "wall_s": time.perf_counter() - t0,
            "checkpoint": str(out / "ckpt.pt"), "command": "python train.py " + " ".join(cmd[2:])}


def run_dlforge(steps: int, out: Path, seed: int = 0, eval_every: int = 100) -> dict:
    argv = [*DLFORGE, "--max-steps", str(steps), "--seed", str(seed), "--eval-every", str(eval_every),
            "--eval-tokens", "32768"]
    report, meta, wall = train_cli(argv, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = max((r for r in rows if "time" in r), key=lambda r: r["step"])  # the training clock at the last step
    return {"ms_per_step": 1000 * last["time"] / last["step"], "steps": steps, "wall_s": wall, "report": report,
            "command": "dlforge train " + " ".join(argv)}


def step_flops() -> float:
    """FLOPs of one training step (forward and backward) of the recipe's model, batch 32 × 128."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode
    from dlforge.registry import create_model
    m = create_model("gpt-small", vocab_size=65, bias=False)
    x = torch.randint(65, (SHAPE["batch"], SHAPE["block_size"]))
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(m(x)[0].flatten(0, 1), x.flatten()).backward()
    return fc.get_total_flops()


def nanogpt_val_loss(tree: Path, ckpt: Path) -> dict:
    """nanoGPT's checkpoint in dlforge's GPT (the same arithmetic, weights renamed), scored by lm_loss over
    nanoGPT's own val.bin."""
    import numpy as np
    import torch
    from dlforge.recipes.language_model import lm_loss
    from dlforge.registry import create_model
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    sd = {k.removeprefix("_orig_mod.").removeprefix("transformer."): v for k, v in sd.items()}
    C = SHAPE["d_model"]
    ours = {"tok.weight": sd["wte.weight"], "head.weight": sd["wte.weight"], "pos.emb.weight": sd["wpe.weight"],
            "ln_f.weight": sd["ln_f.weight"]}
    for i in range(SHAPE["n_layer"]):
        h, b = f"h.{i}.", f"blocks.{i}."
        ours |= {b + "ln1.weight": sd[h + "ln_1.weight"], b + "ln2.weight": sd[h + "ln_2.weight"],
                 b + "attn.q.weight": sd[h + "attn.c_attn.weight"][:C],      # c_attn: q, k, v stacked
                 b + "attn.kv.weight": sd[h + "attn.c_attn.weight"][C:],
                 b + "attn.proj.weight": sd[h + "attn.c_proj.weight"],
                 b + "mlp.0.weight": sd[h + "mlp.c_fc.weight"], b + "mlp.2.weight": sd[h + "mlp.c_proj.weight"]}
    vocab = sd["wte.weight"].shape[0]
    model = create_model("gpt-small", vocab_size=vocab, bias=False)
    model.load_state_dict(ours, strict=True)
    val = torch.from_numpy(np.fromfile(tree / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16).astype(np.int64))
    return lm_loss(model, val, SHAPE["block_size"], torch.device("cpu"))


def dlforge_val_loss(run: Path, which: str) -> dict:
    import dlforge
    h = dlforge.load(run, which=which)
    return {"loss": h.evaluate()["loss"]}


def steps_benchmark(args, work: Path) -> dict:
    tree = nanogpt_tree(work)
    flops = step_flops()
    n = [0]

    def fresh(name: str) -> Path:
        n[0] += 1
        return work / f"{name}-{n[0]}"

    rows = interleave(("nanogpt", lambda: run_nanogpt(tree, args.steps, fresh("nanogpt"), eval_iters=1)),
                      ("dlforge", lambda: run_dlforge(args.steps, fresh("dlforge"), eval_every=10 ** 6)),
                      args.pairs, log=lambda m: print(m[:300], file=sys.stderr))
    return {"benchmark": "gpt_vs_nanogpt steps", "pairs": args.pairs, "steps_per_run": args.steps,
            "command": "python -m benchmarks.gpt_vs_nanogpt steps " + " ".join(sys.argv[2:]),
            "step_flops": flops,
            "nanogpt_ms_per_step": spread([r["nanogpt"]["ms_per_step"] for r in rows], 1),
            "dlforge_ms_per_step": spread([r["dlforge"]["ms_per_step"] for r in rows], 1),
            "speedup": spread([r["nanogpt"]["ms_per_step"] / r["dlforge"]["ms_per_step"] for r in rows], 3),
            "fp32_matmul_peak_gflops": spread([r["peak_gflops"] for r in rows], 1),
            "percent_of_peak": {side: spread([100 * flops / (r[side]["ms_per_step"] / 1000) / 1e9 / r["peak_gflops"]
                                              for r in rows], 1) for side in ("nanogpt", "dlforge")},
            "nanogpt_command": rows[0]["nanogpt"]["command"], "dlforge_command": rows[0]["dlforge"]["command"]}


def quality_benchmark(args, work: Path) -> dict:
    out = {"benchmark": "gpt_vs_nanogpt quality", "steps": args.steps,
           "command": "python -m benchmarks.gpt_vs_nanogpt quality " + " ".join(sys.argv[2:]), "runs": []}
    for seed in [] if args.skip_nanogpt else args.nanogpt_seeds:
        tree = nanogpt_seeded(nanogpt_tree(work), seed)
        r = run_nanogpt(tree, args.steps, work / f"nanogpt-seed{seed}")
        r["full_val_loss"] = nanogpt_val_loss(tree, Path(r["checkpoint"]))["loss"]
        out["runs"].append({"who": "nanogpt", "seed": seed, **r})
        print(json.dumps(out["runs"][-1]), file=sys.stderr)
    for seed in args.seeds:
        run = work / f"dlforge-seed{seed}"
        r = run_dlforge(args.steps, run, seed=seed)
        r["full_val_loss_last"] = dlforge_val_loss(run, "last")["loss"]
        r["full_val_loss_best"] = r.pop("report")["loss"]
        out["runs"].append({"who": "dlforge", "seed": seed, **r})
        print(json.dumps(out["runs"][-1]), file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("steps", "quality"))
    ap.add_argument("--pairs", type=int, default=3, help="steps: nanoGPT/dlforge pairs, run A B A B")
    ap.add_argument("--steps", type=int, help="training steps per run (steps: 100; quality: 1574)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1], help="quality: dlforge's seeds (none: nanoGPT only)")
    ap.add_argument("--nanogpt-seeds", type=int, nargs="*", default=[0],
                    help="quality: nanoGPT's seeds (s: torch.manual_seed(1337 + s) in its train.py)")
    ap.add_argument("--skip-nanogpt", action="store_true", help="quality: dlforge's runs only")
    ap.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--save", action="store_true", help="also write benchmarks/results/gpt-vs-nanogpt-WHAT.json")
    args = ap.parse_args()
    args.steps = args.steps or (100 if args.what == "steps" else 1574)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = (steps_benchmark if args.what == "steps" else quality_benchmark)(args, work)
    print(json.dumps(result))
    if args.save:
        path = RESULTS / f"gpt-vs-nanogpt-{args.what}.json"
        runs = [{**r, "command_of_benchmark": result["command"]} for r in result.get("runs", [])]
        if args.what == "quality" and path.is_file():  # the runs already there (other seeds, other code) are kept
            old = json.loads(path.read_text())
            if old.get("steps") == result["steps"]:
                result = {**old, "runs": old["runs"] + runs}
        path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""dlforge's GPT against nanoGPT (github.com/karpathy/nanoGPT), side by side on char-level tinyshakespeare.

The recipe is `gpt-small`'s 10-minute one, run by steps: 4 layers × 4 heads × 192 wide, context 128, batch 32,
AdamW lr 2e-3 with 50 warm-up steps and a cosine to 2e-4, β2 0.99, no weight decay, gradient clip 1, no
dropout, no biases (nanoGPT's default bias=False; dlforge's --no-bias), fp32 on the CPU, nanoGPT with
--compile=False (its README's CPU recipe).

    python -m benchmarks.gpt_vs_nanogpt steps --save     # training step time, 3 interleaved pairs of 100 steps
    python -m benchmarks.gpt_vs_nanogpt steps --save --out benchmarks/results/gpt-vs-nanogpt-steps-MACHINE.json
    python -m benchmarks.gpt_vs_nanogpt quality --save   # 1,574 steps: nanoGPT, then dlforge seeds 0 and 1
    python -m benchmarks.gpt_vs_nanogpt quality --seeds --nanogpt-seeds 1 --save   # another nanoGPT seed, kept beside
    python -m benchmarks.gpt_vs_nanogpt lockstep --save  # both from nanoGPT's initial weights, on the same windows
    python -m benchmarks.gpt_vs_nanogpt lockstep --steps 60 --match-warmup   # step by step: the same arithmetic?

steps: nanoGPT then dlforge, --pairs times (benchmarks/pairs.py), the fp32 matmul peak measured before each
pair. Step time: nanoGPT's own per-iteration log without its first 10 steps, dlforge's training clock over all
its steps (its first steps count: slightly against dlforge). Neither includes start-up or evaluation. The ratio of each pair, and dlforge's share of that pair's peak (FLOPs of one step counted by
FlopCounterMode, attention included: benchmarks.pairs.flop_counter), as median (min–max).

quality: both checkpoints after 1,574 steps scored by one evaluator, dlforge's full-validation loss (dlforge's
run with its moving average of the weights, --ema-decay 0.99 by default, and with its last raw weights)
(--ema-decays: more averages kept beside it, each scored at the last step)
(lm_loss: non-overlapping windows of 128 over the whole last 10% of the text; nanoGPT's weights are loaded into
dlforge's GPT, the same arithmetic), each on its own script's validation split (nanoGPT's is one character
longer).

lockstep: the two training programs with their randomness taken out. nanoGPT's train.py (a patched copy) saves
its initial weights and reads its training windows from a file of offsets drawn once (--offset-seed);
dlforge's `dlforge train` (through this module's _locked-dlforge entry, which replaces TokenLoader's windows
with the same offsets and logs every training loss) starts from those weights with --init-from. Every
step's training loss is compared, and both final checkpoints are scored as in quality. nanoGPT's warm-up is
lr·(it+1)/(warmup+1), dlforge's lr·(step+1)/warmup: --match-warmup gives nanoGPT dlforge's, so that nothing
but floating-point rounding differs.

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

from benchmarks.budget_sweep import averages_cli, averages_scored
from benchmarks.pairs import cpu_name, flop_counter, interleave, save_options, saved_path, spread, train_cli

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


LOCKED = [  # (what nanoGPT's train.py has, what the lockstep copy has instead)
    ("def get_batch(split):",
     ("_OFFSETS = np.load(os.environ['DLFORGE_OFFSETS']); _NEXT = [0]  # dlforge lockstep: the training windows\n"
      "def get_batch(split):")),
    ("    ix = torch.randint(len(data) - block_size, (batch_size,))",
     ("    if split == 'lock':\n"
      "        data = np.memmap(os.path.join(data_dir, 'train.bin'), dtype=np.uint16, mode='r')\n"
      "        ix = _OFFSETS[_NEXT[0]]; _NEXT[0] += 1\n"
      "    else:\n"
      "        ix = torch.randint(len(data) - block_size, (batch_size,))")),
    ("X, Y = get_batch('train') # fetch the very first batch", "X, Y = get_batch('lock') # fetch the very first batch"),
    ("        X, Y = get_batch('train')", "        X, Y = get_batch('lock')"),
    ("    model = GPT(gptconf)\nelif init_from == 'resume':",
     "    model = GPT(gptconf)\n    torch.save(model.state_dict(), os.environ['DLFORGE_INIT'])\nelif init_from == 'resume':"),
    ("loss {lossf:.4f}", "loss {lossf:.6f}"),
]
MATCH_WARMUP = ("return learning_rate * (it + 1) / (warmup_iters + 1)", "return learning_rate * (it + 1) / warmup_iters")


def nanogpt_locked(tree: Path, match_warmup: bool) -> Path:
    """A copy of nanoGPT whose train.py saves its initial weights to $DLFORGE_INIT, reads its training windows
    from $DLFORGE_OFFSETS (an .npy of (steps + 2, batch) offsets into train.bin) and prints every loss to 6
    decimals; with match_warmup, its warm-up is dlforge's lr·(step+1)/warmup."""
    copy = tree.with_name(f"{tree.name}-locked{'-warmup' if match_warmup else ''}")
    if not copy.exists():
        subprocess.run(["cp", "-r", str(tree), str(copy)], check=True)
        text = (copy / "train.py").read_text()
        for old, new in LOCKED + ([MATCH_WARMUP] if match_warmup else []):
            if text.count(old) != 1:
                sys.exit(f"nanoGPT's train.py no longer has {old!r} once: cannot make its lockstep copy")
            text = text.replace(old, new)
        (copy / "train.py").write_text(text)
    return copy


def locked_dlforge(argv: list[str]) -> int:
    """`python -m benchmarks.gpt_vs_nanogpt _locked-dlforge OFFSETS LOSSES train ...`: dlforge's CLI with the
    training windows read from OFFSETS (the k-th batch of the run: row k) and every training loss appended to
    LOSSES, one a line."""
    import numpy as np
    import torch
    from dlforge.cli import main as cli
    from dlforge.data.loader import TokenLoader
    from dlforge.train.tasks import LanguageModelTask
    offsets, log = np.load(argv[0]), open(argv[1], "w")

    def epoch(self, epoch: int = 0, start: int = 0):
        T = self.block_size
        for i in range(start, len(self)):
            chunk = torch.stack([self.ids[o:o + T + 1] for o in offsets[epoch * len(self) + i].tolist()]).long()
            yield chunk[:, :-1], chunk[:, 1:], torch.tensor(i == 0)

    step = LanguageModelTask.step

    def logged(self, model, batch):
        loss, stats = step(self, model, batch)
        if model.training:
            log.write(f"{loss.item():.6f}\n")
        return loss, stats

    TokenLoader.epoch, LanguageModelTask.step = epoch, logged
    try:
        return cli(argv[2:])
    finally:
        log.close()


SKIPPED = 10  # nanoGPT's first iterations, left out of its step time (warm-up; dlforge's clock counts them)


def run_nanogpt(tree: Path, steps: int, out: Path, eval_iters: int = 20, env: dict | None = None) -> dict:
    """nanoGPT's train.py for `steps` updates; -> its per-iteration times and loss, the checkpoint path."""
    cmd = [sys.executable, "train.py", *NANOGPT, f"--max_iters={steps}", f"--lr_decay_iters={steps}",
           f"--eval_interval={steps}", f"--eval_iters={eval_iters}", f"--out_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode:
        sys.exit(f"nanoGPT failed:\n{proc.stderr[-3000:]}")
    iters = [(int(i), float(loss), float(ms))
             for i, loss, ms in re.findall(r"iter (\d+): loss ([\d.]+), time ([\d.]+)ms", proc.stdout)]
    # iteration 0 carries the first evaluation, and the last one the final evaluation: left out
    times = [ms for i, _, ms in iters if SKIPPED <= i < steps]  # none in a run this short (quality, lockstep)
    return {"ms_per_step": sum(times) / len(times) if times else None, "steps": steps, "wall_s": time.perf_counter() - t0,
            "checkpoint": str(out / "ckpt.pt"), "command": "python train.py " + " ".join(cmd[2:]),
            "losses": [loss for i, loss, _ in iters if i < steps]}


def run_dlforge(steps: int, out: Path, seed: int = 0, eval_every: int = 100, extra: tuple = (),
                entry: tuple = ()) -> dict:
    argv = [*DLFORGE, "--max-steps", str(steps), "--seed", str(seed), "--eval-every", str(eval_every),
            "--eval-tokens", "32768", *extra]
    report, meta, wall = train_cli(argv, out, entry)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = max((r for r in rows if "time" in r), key=lambda r: r["step"])  # the training clock at the last step
    return {"ms_per_step": 1000 * last["time"] / last["step"], "steps": steps, "wall_s": wall, "report": report,
            "command": "dlforge train " + " ".join(argv)}


def step_flops() -> float:
    """FLOPs of one training step (forward and backward) of the recipe's model, batch 32 × 128."""
    import torch
    import torch.nn.functional as F
    from dlforge.registry import create_model
    m = create_model("gpt-small", vocab_size=65, bias=False)
    x = torch.randint(65, (SHAPE["batch"], SHAPE["block_size"]))
    with flop_counter() as fc:
        F.cross_entropy(m(x)[0].flatten(0, 1), x.flatten()).backward()
    return fc.get_total_flops()


def dlforge_names(sd: dict) -> dict:
    """nanoGPT's state dict (bias=False) under dlforge's GPT names: c_attn's q, k, v rows split into q and kv,
    the tied head given its own entry."""
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
    return ours


def nanogpt_val_loss(tree: Path, ckpt: Path | None = None, model=None) -> dict:
    """nanoGPT's checkpoint in dlforge's GPT (the same arithmetic, weights renamed), or a dlforge GPT `model`,
    scored by lm_loss over nanoGPT's own val.bin (the same characters as dlforge's split, one more at its start)."""
    import numpy as np
    import torch
    from dlforge.recipes.language_model import lm_loss
    from dlforge.registry import create_model
    if model is None:
        ours = dlforge_names(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
        model = create_model("gpt-small", vocab_size=ours["tok.weight"].shape[0], bias=False)
        model.load_state_dict(ours, strict=True)
    val = torch.from_numpy(np.fromfile(tree / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16).astype(np.int64))
    return lm_loss(model, val, SHAPE["block_size"], torch.device("cpu"))


def dlforge_val_loss(run: Path, which: str, ema: bool = True) -> dict:
    import dlforge
    h = dlforge.load(run, which=which, ema=ema)
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
            "machine": cpu_name(), "step_flops": flops,
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
        r.pop("losses")  # per-step losses are for lockstep's comparison, not kept here
        r["full_val_loss"] = nanogpt_val_loss(tree, Path(r["checkpoint"]))["loss"]
        out["runs"].append({"who": "nanogpt", "seed": seed, **r, "machine": cpu_name()})
        print(json.dumps(out["runs"][-1]), file=sys.stderr)
    for seed in args.seeds:
        run = work / f"dlforge-seed{seed}"
        averages = work / f"averages-seed{seed}.safetensors"
        r = run_dlforge(args.steps, run, seed=seed, extra=tuple(args.dlforge_flags.split()),
                        entry=averages_cli(averages, args.ema_decays))
        if args.ema_decays:  # the last step's loss by moving average's decay (the run's own among them)
            r["full_val_loss_last_by_ema_decay"] = averages_scored(run, averages)
        r["full_val_loss_last"] = dlforge_val_loss(run, "last")["loss"]   # the moving average: what the run loads
        r["full_val_loss_last_raw"] = dlforge_val_loss(run, "last", ema=False)["loss"]  # its last step's weights
        r["full_val_loss_best"] = r.pop("report")["loss"]
        out["runs"].append({"who": "dlforge", "seed": seed, **r, "machine": cpu_name()})
        print(json.dumps(out["runs"][-1]), file=sys.stderr)
    return out


def lockstep_benchmark(args, work: Path) -> dict:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    tree = nanogpt_locked(nanogpt_tree(work), args.match_warmup)
    n_train = len(np.memmap(tree / "data" / "shakespeare_char" / "train.bin", dtype=np.uint16, mode="r"))
    g = torch.Generator().manual_seed(args.offset_seed)
    # nanoGPT makes one update more than max_iters (after its last checkpoint) and fetches a batch ahead
    offsets = torch.randint(n_train - SHAPE["block_size"], (args.steps + 2, SHAPE["batch"]), generator=g)
    files = {k: work / f"lockstep-{k}" for k in ("offsets.npy", "init.pt", "init.safetensors", "losses.txt")}
    np.save(files["offsets.npy"], offsets.numpy())
    nano = run_nanogpt(tree, args.steps, work / "lockstep-nanogpt", eval_iters=1,
                       env={"DLFORGE_OFFSETS": str(files["offsets.npy"]), "DLFORGE_INIT": str(files["init.pt"])})
    nano["full_val_loss"] = nanogpt_val_loss(tree, Path(nano["checkpoint"]))["loss"]
    init = dlforge_names(torch.load(files["init.pt"], weights_only=True))
    save_file({k: v.clone().contiguous() for k, v in init.items()}, files["init.safetensors"])
    run = work / "lockstep-dlforge"
    ours = run_dlforge(args.steps, run, eval_every=10 ** 6, extra=("--init-from", str(files["init.safetensors"])),
                       entry=("-m", "benchmarks.gpt_vs_nanogpt", "_locked-dlforge", str(files["offsets.npy"]),
                              str(files["losses.txt"])))
    import dlforge
    handle = dlforge.load(run, which="last", ema=False)  # the raw weights, as nanoGPT's; scored on both splits
    ours["full_val_loss"] = handle.evaluate()["loss"]
    # both checkpoints on one split for this comparison: the same characters, the same windows
    ours["full_val_loss_on_nanogpt_split"] = nanogpt_val_loss(tree, model=handle.model)["loss"]
    a, b = nano.pop("losses"), [float(x) for x in files["losses.txt"].read_text().split()]
    ours.pop("report")
    diff = [abs(x - y) for x, y in zip(a, b)]
    tail = min(100, len(a))
    return {"benchmark": "gpt_vs_nanogpt lockstep", "steps": args.steps, "offset_seed": args.offset_seed,
            "match_warmup": args.match_warmup,
            "command": "python -m benchmarks.gpt_vs_nanogpt lockstep " + " ".join(sys.argv[2:]),
            "nanogpt": nano, "dlforge": ours,
            "max_abs_loss_diff_first_50_steps": round(max(diff[:50]), 6),
            "first_step_diff_over_1e-3": next((i for i, d in enumerate(diff) if d > 1e-3), None),
            f"mean_train_loss_last_{tail}_steps": {"nanogpt": round(sum(a[-tail:]) / tail, 4),
                                                     "dlforge": round(sum(b[-tail:]) / tail, 4)},
            "train_loss_every_50_steps": {"nanogpt": [round(x, 4) for x in a[::50]],
                                          "dlforge": [round(x, 4) for x in b[::50]]}}


def main() -> None:
    if sys.argv[1:2] == ["_locked-dlforge"]:
        sys.exit(locked_dlforge(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("steps", "quality", "lockstep"))
    ap.add_argument("--pairs", type=int, default=3, help="steps: nanoGPT/dlforge pairs, run A B A B")
    ap.add_argument("--steps", type=int, help="training steps per run (steps: 100; quality: 1574)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1], help="quality: dlforge's seeds (none: nanoGPT only)")
    ap.add_argument("--nanogpt-seeds", type=int, nargs="*", default=[0],
                    help="quality: nanoGPT's seeds (s: torch.manual_seed(1337 + s) in its train.py)")
    ap.add_argument("--dlforge-flags", default="", metavar="'FLAGS'",
                    help="quality: more flags for dlforge's runs, after the recipe's (e.g. '--sampling random', "
                         "the training windows before December 2026)")
    ap.add_argument("--skip-nanogpt", action="store_true", help="quality: dlforge's runs only")
    ap.add_argument("--ema-decays", type=float, nargs="+", default=[], metavar="D",
                    help="quality: keep moving averages of these decays beside the run's own and score each at the "
                         "last step (the training is unchanged by them)")
    ap.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--match-warmup", action="store_true", help="lockstep: nanoGPT's warm-up made dlforge's")
    ap.add_argument("--offset-seed", type=int, default=12345, help="lockstep: the seed the training windows are drawn with")
    save_options(ap, RESULTS / "gpt-vs-nanogpt-WHAT.json")
    args = ap.parse_args()
    if args.steps is None:
        args.steps = 100 if args.what == "steps" else 1574
    if args.steps < (least := SKIPPED + 1 if args.what == "steps" else 1):
        why = f" (nanoGPT's first {SKIPPED} iterations are left out of its step time)" if args.what == "steps" else ""
        sys.exit(f"--steps: expected {least} or more{why}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = {"steps": steps_benchmark, "quality": quality_benchmark,
                  "lockstep": lockstep_benchmark}[args.what](args, work)
    print(json.dumps(result))
    if path := saved_path(args, RESULTS / f"gpt-vs-nanogpt-{args.what}{'-warmup-matched' if args.match_warmup else ''}.json"):
        runs = [{**r, "command_of_benchmark": result["command"]} for r in result.get("runs", [])]
        if args.what == "quality" and path.is_file():  # the runs already there (other seeds, other code) are kept
            old = json.loads(path.read_text())
            if old.get("steps") == result["steps"]:
                result = {**old, "runs": old["runs"] + runs}
        path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

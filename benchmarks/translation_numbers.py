"""The encoder–decoder on numbers written as words (pt, es, pl, it, sr, en; both directions):
exact match on held-out numbers after a fixed training time, greedy against beam search, decoding speed.

    python -m benchmarks.translation_numbers train --minutes 20 --save   # train, then evaluate (below)
    python -m benchmarks.translation_numbers eval RUN --save             # greedy (all test numbers), beam 4

`train` runs the real command line (`dlforge train transformer --data numbers ... --max-time M`) in a
subprocess; the wall time it reports includes making and tokenizing the corpus. `eval` runs
`dlforge eval RUN --json` greedy on every held-out test number in every direction (5,000 × 12 pairs)
and with --beam 4 on the first --beam-limit of each direction. Run it alone: it measures the machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The 20-minute recipe (2 CPU cores): 3 + 3 layers, 192 wide, no dropout (each pair is seen about once),
# cosine decay to the end of --max-time.
RECIPE = ["transformer", "--data", "numbers", "--width", "192", "--layers", "3", "--heads", "4", "--dropout", "0",
          "--batch-size", "128", "--lr", "1.5e-3", "--warmup-steps", "300", "--lr-schedule", "cosine",
          "--min-lr-ratio", "0.05", "--eval-every", "500", "--train-pairs", "40000", "--epochs", "1000"]


def _run(cmd: list[str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - t0


def training(run: Path) -> dict:
    """From the run directory: training time and steps, pairs seen, the validation curve."""
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((run / "config.json").read_text())
    return {"train_s": metrics[-1]["time"], "steps": metrics[-1]["step"],
            "pairs_seen": metrics[-1]["step"] * cfg["train"]["batch_size"], "train_pairs": cfg["data"]["train_pairs"],
            "model": cfg["model"],
            "val_curve": [(m["step"], round(m["time"], 1), m["val_exact_match"]) for m in metrics
                          if "val_exact_match" in m]}


def evaluate(run: Path, beam: int, beam_limit: int) -> dict:
    out = {}
    for name, extra in (("greedy", []), (f"beam{beam}", ["--beam", str(beam), "--limit", str(beam_limit)]),
                        ("greedy_same_pairs", ["--limit", str(beam_limit)])):
        stdout, seconds = _run([sys.executable, "-m", "dlforge", "eval", str(run), "--json", *extra])
        r = json.loads(stdout.strip().splitlines()[-1])
        out[name] = {"test_pairs": r["test_pairs"], "exact_match": r["exact_match"], "cer": r["cer"],
                     "sentences_per_s": r["sentences_per_s"],
                     "per_direction": {g: v["exact_match"] for g, v in r["per_direction"].items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--minutes", type=float, default=20)
    t.add_argument("--out", default=str(ROOT / "runs" / "bench-numbers"))
    e = sub.add_parser("eval")
    e.add_argument("run")
    for p in (t, e):
        p.add_argument("--beam", type=int, default=4)
        p.add_argument("--beam-limit", type=int, default=1000)
        p.add_argument("--save", action="store_true")
    args = ap.parse_args()
    result: dict = {}
    run = Path(args.run if args.cmd == "eval" else args.out)
    if args.cmd == "train":
        cmd = [sys.executable, "-m", "dlforge", "train", *RECIPE, "--max-time", str(args.minutes), "--out", str(run),
               "--no-progress"]
        _, seconds = _run(cmd)
        result = {"command": " ".join(cmd[1:]), "wall_s": seconds}
    result.update({"run": str(run), **training(run), **evaluate(run, args.beam, args.beam_limit)})
    print(json.dumps(result, indent=1))
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "translation-numbers.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

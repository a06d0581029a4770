"""Quality of the reference recipe (MY_NET, 48×48, Adam 1e-3, wd 1e-4, batch 64, 5 epochs).

Targets: digits ≥ 97% test accuracy in under a minute of training; full Fashion-MNIST ≥ 92.0%.
Prints one JSON line per dataset with test accuracy, training wall time and images/s. dlforge validates, picks
the best checkpoint with and reports its moving average of the weights (--ema-decay, default 0.999); the line
also gives the same checkpoint's raw weights' test accuracy (raw_test_accuracy).

    python -m benchmarks.cnn_quality                      # both (Fashion-MNIST: ~20-40 min on 2 cores)
    python -m benchmarks.cnn_quality --data digits --seeds 0 1 2 3
    python -m benchmarks.cnn_quality --data fashion-mnist --val-fraction 0   # all 60,000, as the reference trains
    python -m benchmarks.cnn_quality --data fashion-mnist --ema-decay 0      # the raw weights, as the reference
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(data: str, epochs: int, val_fraction: float | None = None, seed: int = 0, ema_decay: float | None = None) -> dict:
    import dlforge
    from dlforge.train.checkpoint import load_checkpoint
    split = [] if val_fraction is None else ["--val-fraction", str(val_fraction)]
    ema = [] if ema_decay is None else ["--ema-decay", str(ema_decay)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        argv = ["train", "cnn", "--data", data, "--epochs", str(epochs), "--seed", str(seed), "--json", "--no-progress",
                *split, *ema]
        out = subprocess.run([sys.executable, "-m", "dlforge", *argv, "--out", f"{tmp}/run"],
                             check=True, capture_output=True, text=True, cwd=ROOT).stdout
        wall = time.perf_counter() - t0
        report = json.loads(out.strip().splitlines()[-1])
        meta = load_checkpoint(Path(tmp) / "run" / "checkpoints" / "last.safetensors")[1]
        epochs_log = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        raw = dlforge.load(Path(tmp) / "run", ema=False).evaluate()["accuracy"]  # the same checkpoint, raw weights
    return {"benchmark": "cnn_quality", "data": data, "epochs": epochs, "seed": seed, "command": "dlforge " + " ".join(argv),
            "val_fraction": 0.1 if val_fraction is None else val_fraction, "test_accuracy": round(100 * report["accuracy"], 2),
            "raw_test_accuracy": round(100 * raw, 2),
            "test_loss": round(report["loss"], 4), "train_seconds": round(meta["elapsed"], 1),
            "wall_seconds_with_startup_and_eval": round(wall, 1),
            "train_images_per_s": round(sum(r["images_per_s"] for r in epochs_log) / len(epochs_log), 1),
            "val_accuracy_per_epoch": [round(100 * r["val_accuracy"], 2) for r in epochs_log if "val_accuracy" in r]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=["digits", "fashion-mnist", "both"], default="both")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--val-fraction", type=float,
                    help="training images held out for validation (dlforge's default 0.1; the reference holds out "
                         "none: 0 trains on all of them, as it does)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ema-decay", type=float, help="dlforge's --ema-decay (default: dlforge's, 0.999; 0: none)")
    ap.add_argument("--save", type=Path, help="also append each JSON line to this file")
    args = ap.parse_args()
    for data, seed in [(d, s) for d in (["digits", "fashion-mnist"] if args.data == "both" else [args.data])
                       for s in args.seeds]:
        line = json.dumps(run(data, args.epochs, args.val_fraction, seed, args.ema_decay))
        print(line, flush=True)
        if args.save:
            with args.save.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()

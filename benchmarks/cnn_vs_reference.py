"""dlforge's image pipeline against the reference CNN script (../shared/peers/seed_cnn.py), side by side.

Same model (MY_NET, 48×48, 3 channels), same hyper-parameters (Adam 1e-3, weight decay 1e-4,
batch 64, test batch 256), same data (full Fashion-MNIST, all 60,000 training images: no
validation split), same step count; the two run one after the other, never at once.
The two run interleaved, reference then dlforge, --pairs times (benchmarks/pairs.py), the fp32 matmul peak
measured before each pair. Prints one JSON line: training and evaluation images/s of both, the ratio of each
pair as median (min–max), each side's share of that pair's matmul peak (FLOPs counted by FlopCounterMode),
and the test accuracies.

    python -m benchmarks.cnn_vs_reference --save               # 3 pairs of 100-step runs (~12 min on 2 cores)
    python -m benchmarks.cnn_vs_reference --max-steps 0 --pairs 1  # one full epoch each (~15 min)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.pairs import cpu_name, flop_counter, interleave, report, save_options, saved_path, spread

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"
PEER_VENV = Path(os.environ.get("PEER_VENV", "/tmp/seed-peer-venv"))
PEER_DATA = Path(os.environ.get("PEER_DATA", "/tmp/seed-peer-data"))


def run_peer(max_steps: int, epochs: int) -> dict:
    if not (PEER_VENV / "bin" / "python").exists() or not (PEER_DATA / "FashionMNIST" / "raw").is_dir():
        subprocess.run(["bash", str(PEERS / "setup-seed-peer.sh")], check=True)
    out = subprocess.run([str(PEER_VENV / "bin" / "python"), str(PEERS / "seed_cnn.py"), str(PEER_DATA), "FashionMNIST",
                          str(max_steps), str(epochs)], check=True, capture_output=True, text=True).stdout
    fig = dict(re.findall(r"(\w+)=([\d.]+)", out))
    return {k: float(v) for k, v in fig.items()}


def run_dlforge(max_steps: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "dlforge", "train", "cnn", "--data", "fashion-mnist", "--epochs", str(epochs),
               "--val-fraction", "0", "--out", f"{tmp}/run", "--json", "--no-progress"]
        if max_steps:
            cmd += ["--max-steps", str(max_steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        printed = json.loads(out.strip().splitlines()[-1])
        ckpt_meta = _train_seconds(Path(tmp) / "run")
    images = ckpt_meta["step"] * 64
    return {"train_img_per_s": images / ckpt_meta["elapsed"], "eval_img_per_s": printed["eval_images_per_s"],
            "test_acc": 100 * printed["accuracy"], "train_s": ckpt_meta["elapsed"]}


def _train_seconds(run: Path) -> dict:
    from dlforge.train.checkpoint import load_checkpoint
    return load_checkpoint(run / "checkpoints" / "last.safetensors")[1]


def flops_per_image() -> tuple[float, float]:
    """(training, evaluation) FLOPs per 48×48 image of MY_NET, counted by torch's FlopCounterMode
    (benchmarks.pairs.flop_counter)."""
    import torch
    import torch.nn.functional as F
    from dlforge.registry import create_model
    m = create_model("cnn")
    x, y = torch.randn(8, 3, 48, 48), torch.randint(0, 10, (8,))
    with flop_counter() as fc:
        F.cross_entropy(m(x), y).backward()
    train = fc.get_total_flops() / 8
    with flop_counter() as fc, torch.no_grad():
        m(x)
    return train, fc.get_total_flops() / 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-steps", type=int, default=100, help="training steps per run (0: full epochs)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=3, help="reference/dlforge pairs, run A B A B "
                                                           "(3 or more for a reported figure; fewer for a quick try)")
    save_options(ap, ROOT / "benchmarks" / "results" / "cnn-vs-reference.json")
    args = ap.parse_args()
    import torch
    train_flops, eval_flops = flops_per_image()
    rows = interleave(("reference", lambda: run_peer(args.max_steps, args.epochs)),
                      ("dlforge", lambda: run_dlforge(args.max_steps, args.epochs)), args.pairs,
                      log=lambda m: print(m, file=sys.stderr))
    share = {side: {kind: spread([100 * f * r[side][f"{kind}_img_per_s"] / 1e9 / r["peak_gflops"] for r in rows], 1)
                    for kind, f in (("train", train_flops), ("eval", eval_flops))} for side in ("reference", "dlforge")}
    result = {
        "benchmark": "cnn_vs_reference", "machine": cpu_name(), "data": "fashion-mnist", "epochs": args.epochs, "max_steps": args.max_steps,
        "pairs": args.pairs, "command": "python -m benchmarks.cnn_vs_reference " + " ".join(sys.argv[1:]),
        "train_speedup": spread([r["dlforge"]["train_img_per_s"] / r["reference"]["train_img_per_s"] for r in rows], 2),
        "eval_speedup": spread([r["dlforge"]["eval_img_per_s"] / r["reference"]["eval_img_per_s"] for r in rows], 2),
        "reference_train_img_per_s": spread([r["reference"]["train_img_per_s"] for r in rows], 1),
        "dlforge_train_img_per_s": spread([r["dlforge"]["train_img_per_s"] for r in rows], 1),
        "reference_eval_img_per_s": spread([r["reference"]["eval_img_per_s"] for r in rows], 1),
        "dlforge_eval_img_per_s": spread([r["dlforge"]["eval_img_per_s"] for r in rows], 1),
        "fp32_matmul_peak_gflops": spread([r["peak_gflops"] for r in rows], 1),
        "train_flops_per_image": train_flops, "eval_flops_per_image": eval_flops,
        "percent_of_peak": share,
        "reference_test_acc": [r["reference"]["test_acc"] for r in rows],
        "dlforge_test_acc": [round(r["dlforge"]["test_acc"], 2) for r in rows],
        "cpu_bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "pairs_raw": rows,
    }
    report(result, saved_path(args))


if __name__ == "__main__":
    main()

"""dlforge's image pipeline against the reference CNN script (../shared/peers/seed_cnn.py), side by side.

Same model (MY_NET, 48×48, 3 channels), same hyper-parameters (Adam 1e-3, weight decay 1e-4,
batch 64, test batch 256), same data (full Fashion-MNIST, all 60,000 training images: no
validation split), same step count; the two run one after the other, never at once.
Prints one JSON line: both training and evaluation images/s, their ratios, both test accuracies,
and dlforge's achieved GFLOP/s against a measured fp32 matmul peak.

    python -m benchmarks.cnn_vs_reference                 # one full epoch each (~15 min on 2 cores)
    python -m benchmarks.cnn_vs_reference --max-steps 200 # a quick look
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
        report = json.loads(out.strip().splitlines()[-1])
        ckpt_meta = _train_seconds(Path(tmp) / "run")
    images = ckpt_meta["step"] * 64
    return {"train_img_per_s": images / ckpt_meta["elapsed"], "eval_img_per_s": report["eval_images_per_s"],
            "test_acc": 100 * report["accuracy"], "train_s": ckpt_meta["elapsed"]}


def _train_seconds(run: Path) -> dict:
    from dlforge.train.checkpoint import load_checkpoint
    return load_checkpoint(run / "checkpoints" / "last.safetensors")[1]


def flops_per_image() -> tuple[float, float]:
    """(training, evaluation) FLOPs per 48×48 image of MY_NET, counted by torch's FlopCounterMode."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode
    from dlforge.registry import create_model
    m = create_model("cnn")
    x, y = torch.randn(8, 3, 48, 48), torch.randint(0, 10, (8,))
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(m(x), y).backward()
    train = fc.get_total_flops() / 8
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(x)
    return train, fc.get_total_flops() / 8


def matmul_peak() -> float:
    import torch
    from dlforge.perf import tune_allocator
    tune_allocator()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=0, help="cap training steps (0: full epochs)")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    peer = run_peer(args.max_steps, args.epochs)
    ours = run_dlforge(args.max_steps, args.epochs)
    train_flops, eval_flops = flops_per_image()
    peak = matmul_peak()
    import torch
    print(json.dumps({
        "benchmark": "cnn_vs_reference", "data": "fashion-mnist", "epochs": args.epochs, "max_steps": args.max_steps,
        "reference_train_img_per_s": peer["train_img_per_s"], "dlforge_train_img_per_s": round(ours["train_img_per_s"], 1),
        "train_speedup": round(ours["train_img_per_s"] / peer["train_img_per_s"], 2),
        "reference_eval_img_per_s": peer["eval_img_per_s"], "dlforge_eval_img_per_s": round(ours["eval_img_per_s"], 1),
        "eval_speedup": round(ours["eval_img_per_s"] / peer["eval_img_per_s"], 2),
        "reference_test_acc": peer["test_acc"], "dlforge_test_acc": round(ours["test_acc"], 2),
        "dlforge_train_gflops": round(train_flops * ours["train_img_per_s"] / 1e9, 1),
        "dlforge_eval_gflops": round(eval_flops * ours["eval_img_per_s"] / 1e9, 1),
        "fp32_matmul_peak_gflops": round(peak, 1), "cpu_bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()

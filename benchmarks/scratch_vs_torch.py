"""The NumPy engine (dlforge.scratch) against a plain PyTorch loop on the same MLP.

Same data (digits, standardised), same initial weights (the engine copies torch's), same batch
order, Adam(lr=1e-3), float32, torch.set_num_threads left as is. Each side trains `--repeats`
times from scratch; steps/s is the median over repeats (training steps only, no evaluation).
Prints ONE JSON line.

    .venv/bin/python -m benchmarks.scratch_vs_torch [--epochs 20] [--batch-size 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from benchmarks.pairs import command
from dlforge.registry import create_model
from dlforge.scratch import MLP, Adam
from dlforge.scratch.data import Arrays, load_arrays


def torch_mlp(sizes: tuple[int, ...]) -> torch.nn.Module:
    """The registry's `mlp` (Flatten, Linear, ReLU, ..., Linear) with the same widths."""
    return create_model("mlp", in_features=sizes[0], num_classes=sizes[-1],
                        hidden=tuple(sizes[1:-1]), activation="relu")


def batch_orders(n: int, epochs: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Index arrays of every mini-batch of every epoch, reshuffled each epoch."""
    rng, batches = np.random.default_rng(seed), []
    for _ in range(epochs):
        order = rng.permutation(n)
        batches += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return batches


def run_torch(data: Arrays, sizes, batches, lr: float, seed: int) -> tuple[float, float, list]:
    torch.manual_seed(seed)
    model = torch_mlp(sizes)
    init = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    idx = [torch.from_numpy(b) for b in batches]
    model.train()
    start = time.perf_counter()
    for b in idx:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.test_x)).argmax(1).numpy()
    return len(batches) / seconds, float((pred == data.test_y).mean()), init


def run_engine(data: Arrays, sizes, batches, lr: float, init: list) -> tuple[float, float]:
    net = MLP(sizes, "relu", "cross_entropy", "float32")
    for dense, (w, b) in zip(net.dense_layers(), zip(init[::2], init[1::2])):
        dense.W.data = w.numpy().T.astype(np.float32).copy()    # torch weight is (out, in)
        dense.b.data = b.numpy().astype(np.float32).copy()
    net.optimizer = Adam(net.parameters(), lr=lr)
    with threadpool_limits(limits=1, user_api="blas"):          # as run_backprop trains
        start = time.perf_counter()
        for b in batches:
            net.train_step(data.train_x[b], data.train_y[b])     # forward, loss, backward, step
        seconds = time.perf_counter() - start
    return len(batches) / seconds, float((net.predict(data.test_x) == data.test_y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = load_arrays("digits", seed=args.seed, dtype="float32")
    sizes = (data.num_features, 64, 32, len(data.classes))
    batches = batch_orders(len(data.train_x), args.epochs, args.batch_size, args.seed)
    torch_runs, engine_runs = [], []
    for _ in range(args.repeats):                                # alternate to share the noise
        t_speed, t_acc, init = run_torch(data, sizes, batches, args.lr, args.seed)
        torch_runs.append((t_speed, t_acc))
        engine_runs.append(run_engine(data, sizes, batches, args.lr, init))
    t_sps = statistics.median(s for s, _ in torch_runs)
    e_sps = statistics.median(s for s, _ in engine_runs)
    print(json.dumps({
        "benchmark": "scratch_vs_torch", "command": command(), "data": "digits", "model": list(sizes),
        "optimizer": "adam",
        "epochs": args.epochs, "batch_size": args.batch_size, "steps": len(batches),
        "engine_steps_per_s": round(e_sps, 1), "torch_steps_per_s": round(t_sps, 1),
        "speed_ratio": round(e_sps / t_sps, 3),
        "engine_test_accuracy": engine_runs[-1][1], "torch_test_accuracy": torch_runs[-1][1],
        "accuracy_gap_points": round(100 * (engine_runs[-1][1] - torch_runs[-1][1]), 2),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "repeats": args.repeats}))


if __name__ == "__main__":
    main()

"""`dlforge backprop`: train the NumPy MLP with the four steps of backpropagation visible.

Each mini-batch: 1. logits = net.forward(x)  2. loss = net.loss(logits, y)  3. net.backward()
4. net.step(). With --trace the first step prints the statistics of each of the four steps.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import TextIO

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from dlforge.errors import DlforgeError
from dlforge.scratch.data import DATASETS, Arrays, load_arrays
from dlforge.scratch.network import DTYPES, MLP
from dlforge.scratch.optim import make_optimizer
from dlforge.scratch.trace import format_trace, trace_step

ACTIVATION_CHOICES = ("relu", "sigmoid", "tanh")
OPTIMIZER_CHOICES = ("adam", "sgd")


def _choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DlforgeError(f"--{option}: expected one of {', '.join(choices)}; got {value!r}")


@dataclass
class BackpropConfig:
    data: str = "digits"            # digits | mnist | fashion-mnist | moons
    hidden: tuple[int, ...] = (64, 32)
    activation: str = "relu"        # relu | sigmoid | tanh
    optimizer: str = "adam"         # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 20
    batch_size: int = 64
    seed: int = 0
    dtype: str = "float32"          # float32 | float64
    trace: bool = False
    json: bool = False
    data_dir: str | None = None

    def __post_init__(self):
        _choice("data", self.data, DATASETS)
        _choice("activation", self.activation, ACTIVATION_CHOICES)
        _choice("optimizer", self.optimizer, OPTIMIZER_CHOICES)
        _choice("dtype", self.dtype, DTYPES)
        self.hidden = tuple(self.hidden)
        if not all(isinstance(h, (int, np.integer)) and h > 0 for h in self.hidden):
            raise DlforgeError("--hidden: expected positive layer widths, e.g. 64,32; "
                               f"got {self.hidden}")
        checks = [("lr", self.lr > 0, "a positive number"),
                  ("momentum", 0 <= self.momentum < 1, "a number in [0, 1)"),
                  ("weight-decay", self.weight_decay >= 0, "a number >= 0"),
                  ("epochs", self.epochs >= 1, "an integer >= 1"),
                  ("batch-size", self.batch_size >= 1, "an integer >= 1")]
        for option, ok, expected in checks:
            if not ok:
                value = getattr(self, option.replace("-", "_"))
                raise DlforgeError(f"--{option}: expected {expected}; got {value}")


def build_network(cfg: BackpropConfig, data: Arrays) -> MLP:
    """MLP (D, *hidden, C) with softmax cross-entropy and the configured optimiser."""
    sizes = (data.num_features, *cfg.hidden, len(data.classes))
    net = MLP(sizes, cfg.activation, "cross_entropy", cfg.dtype, cfg.seed)
    net.optimizer = make_optimizer(cfg.optimizer, net.parameters(), cfg.lr, cfg.momentum,
                                   cfg.weight_decay)
    return net


def evaluate(net: MLP, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a whole split, in batches of 1024."""
    logits = np.concatenate([net.forward(x[i:i + 1024]) for i in range(0, len(x), 1024)])
    return net.criterion.forward(logits, y), float((logits.argmax(1) == y).mean())


def train_epoch(net: MLP, data: Arrays, cfg: BackpropConfig, rng: np.random.Generator,
                epoch: int, out: TextIO) -> tuple[float, float]:
    """One pass over shuffled mini-batches; returns (mean loss, accuracy) seen during training."""
    order = rng.permutation(len(data.train_x))
    starts = range(0, len(order), cfg.batch_size)
    # the bar on stderr, as train's: on stdout it put carriage returns into what a pipe reads
    bar = tqdm(starts, desc=f"Epoch {epoch}/{cfg.epochs}", file=sys.stderr, leave=False, unit="step")
    total_loss, correct = 0.0, 0
    for start in bar:
        idx = order[start:start + cfg.batch_size]
        xb, yb = data.train_x[idx], data.train_y[idx]
        if cfg.trace and net.steps == 0:
            info = trace_step(net, xb, yb)                # the 4 steps, with statistics
            tqdm.write(format_trace(info), file=out)
            loss, logits = info["loss"], net.outputs[-1]
        else:
            logits = net.forward(xb)                      # 1. forward pass
            loss = net.loss(logits, yb)                   # 2. loss calculation
            net.backward()                                # 3. backward pass
            net.step()                                    # 4. weight update
        total_loss += loss * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        seen = min(start + cfg.batch_size, len(order))
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.2%}", refresh=False)
    return total_loss / len(order), correct / len(order)


def run_backprop(cfg: BackpropConfig) -> dict:
    """Train, print epoch lines and a per-class report; with cfg.json the last stdout line is
    one JSON object ("loss" = final train loss, "accuracy" = test accuracy in 0..1, ...)."""
    out = sys.stderr if cfg.json else sys.stdout
    data = load_arrays(cfg.data, cfg.data_dir, cfg.seed, cfg.dtype)
    net = build_network(cfg, data)
    print(f"backprop on {cfg.data}: {len(data.train_x)} train / {len(data.test_x)} test, "
          f"{net!r}, {cfg.optimizer} lr={cfg.lr:g}, {net.num_parameters()} parameters", file=out)
    rng, history, train_seconds = np.random.default_rng(cfg.seed), [], 0.0
    # mini-batch matrices are small: one BLAS thread beats several (no hand-off or spin-waits)
    # overflow is caught as a NaN/Inf loss with a clear error, so numpy need not warn about it
    with threadpool_limits(limits=1, user_api="blas"), np.errstate(over="ignore", invalid="ignore"):
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            loss, acc = train_epoch(net, data, cfg, rng, epoch, out)
            train_seconds += time.perf_counter() - t0
            test_loss, test_acc = evaluate(net, data.test_x, data.test_y)
            history.append({"epoch": epoch, "loss": loss, "accuracy": acc,
                            "test_loss": test_loss, "test_accuracy": test_acc})
            print(f"[Epoch {epoch}] loss = {loss:.4f} | accuracy = {acc:.2%} | test loss = "
                  f"{test_loss:.4f} | test accuracy = {test_acc:.2%}", file=out, flush=True)
        _print_report(net, data, out)
    result = {"loss": history[-1]["loss"], "accuracy": history[-1]["test_accuracy"],
              "train_accuracy": history[-1]["accuracy"], "test_loss": history[-1]["test_loss"],
              "steps": net.steps, "seconds": round(train_seconds, 3),
              "steps_per_s": net.steps / max(train_seconds, 1e-9),
              "parameters": net.num_parameters(), "config": asdict(cfg), "history": history}
    if cfg.json:
        print(json.dumps(result), flush=True)
    return result


def _print_report(net: MLP, data: Arrays, out: TextIO) -> None:
    from sklearn.metrics import classification_report

    pred = net.predict(data.test_x)
    print(classification_report(data.test_y, pred, labels=list(range(len(data.classes))),
                                target_names=data.classes, digits=4, zero_division=0), file=out)

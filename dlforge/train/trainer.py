"""The training loop. It knows tasks (batch -> loss), never a model file; evaluation plugs in as a
callback. Checkpoints at every epoch end and at any early stop; `resume()` continues exactly."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from tqdm import tqdm

from dlforge.data.loader import BatchLoader
from dlforge.errors import DlforgeError
from dlforge.perf import tune_allocator
from dlforge.runs import Run
from dlforge.train import checkpoint as ckpt

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    epochs: int = 5                 # the reference's globals: EPOCHS 5, BATCH_SIZE 64, LR 1e-3, WD 1e-4
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9           # sgd / rmsprop
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    max_steps: int | None = None    # stop (at a clean checkpoint) after this many optimiser steps in all
    max_time: float | None = None   # ... or after this many minutes of training
    grad_clip: float | None = None
    eval_batch_size: int = 256
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [("--optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
                  ("--precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
                  ("--epochs", self.epochs >= 1, "at least 1"), ("--batch-size", self.batch_size >= 1, "at least 1"),
                  ("--lr", self.lr > 0, "a positive number"), ("--weight-decay", self.weight_decay >= 0, "0 or more"),
                  ("--max-steps", self.max_steps is None or self.max_steps >= 1, "at least 1"),
                  ("--max-time", self.max_time is None or self.max_time > 0, "a positive number of minutes"),
                  ("--grad-clip", self.grad_clip is None or self.grad_clip > 0, "a positive number")]
        for opt, ok, want in checks:
            if not ok:
                raise DlforgeError(f"{opt}: expected {want}, got {getattr(self, opt[2:].replace('-', '_'))!r}")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DlforgeError(f"--device: expected auto, cpu, cuda, cuda:N or mps; got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DlforgeError("--device cuda: no CUDA device is available here (try --device auto)")
    return dev


def autocast(precision: str, device: torch.device) -> torch.autocast:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision == "fp16" and device.type == "cpu":
        raise DlforgeError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def cpu_has_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def build_optimizer(cfg: TrainConfig, params, device: torch.device) -> torch.optim.Optimizer:
    fused = device.type in ("cpu", "cuda")  # one kernel over all tensors: ~3x faster than the loop on CPU
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.RMSprop(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _to(batch, device: torch.device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


class Trainer:
    def __init__(self, task: Any, model: torch.nn.Module, train: BatchLoader, cfg: TrainConfig, run: Run,
                 evaluate: Callable[[torch.nn.Module], dict] | None = None, meta: dict | None = None):
        self.task, self.cfg, self.run, self.train, self.evaluate = task, cfg, run, train, evaluate
        tune_allocator()
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device)
        self.opt = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad], self.device)
        self.meta = meta or {}
        self.epoch, self.step_in_epoch, self.step, self.elapsed = 0, 0, 0, 0.0
        self.best: float | None = None
        self.sums = {"loss": 0.0, "correct": 0, "count": 0}
        self.tb = self._tensorboard() if cfg.tensorboard else None
        if cfg.precision == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            print("dlforge: note: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 is emulated and slower than fp32",
                  file=sys.stderr)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DlforgeError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        return SummaryWriter(str(self.run.path / "tensorboard"))

    # ------------------------------------------------------------ checkpoints
    def save(self, which: str) -> None:
        meta = {**self.meta, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step,
                "elapsed": self.elapsed, "best": self.best, "sums": self.sums, "train": asdict(self.cfg)}
        ckpt.save_checkpoint(self.run.checkpoint(which), self.model, meta, self.opt)

    def resume(self) -> None:
        path = self.run.checkpoint("last")
        tensors, meta = ckpt.load_checkpoint(path)
        if meta.get("model", {}).get("name") != self.meta.get("model", {}).get("name"):
            raise DlforgeError(f"{path}: checkpoint of model {meta.get('model', {}).get('name')!r}, "
                               f"not {self.meta.get('model', {}).get('name')!r}")
        ckpt.restore_model(self.model, tensors, path)
        ckpt.restore_optimizer(self.opt, tensors, meta)
        ckpt.restore_rng(tensors)
        self.epoch, self.step_in_epoch, self.step = meta["epoch"], meta["step_in_epoch"], meta["step"]
        self.elapsed, self.best, self.sums = meta["elapsed"], meta["best"], meta["sums"]
        self.run.truncate_metrics(self.step)

    # ------------------------------------------------------------ the loop
    def _budget_left(self, t0: float) -> bool:
        cfg = self.cfg
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return False
        return cfg.max_time is None or self.elapsed + (time.perf_counter() - t0) < cfg.max_time * 60

    def train_step(self, batch) -> None:
        self.model.train()
        with autocast(self.cfg.precision, self.device):
            loss, stats = self.task.step(self.model, _to(batch, self.device))
        if not torch.isfinite(loss):
            raise DlforgeError(f"loss became {loss.item()} at step {self.step + 1}; the last good checkpoint "
                               f"({self.run.checkpoint('last')}) is kept — try a lower --lr or --grad-clip")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        n = stats["count"]
        self.sums["loss"] += loss.item() * n
        self.sums["correct"] += int(stats["correct"])
        self.sums["count"] += n
        self.step += 1
        self.step_in_epoch += 1

    def running(self) -> dict:
        n = max(self.sums["count"], 1)
        return {"loss": self.sums["loss"] / n, "accuracy": self.sums["correct"] / n}

    def fit(self) -> dict:
        """Train until the epochs, --max-steps or --max-time run out. -> the last epoch's record."""
        cfg, record = self.cfg, {}
        stopped = False
        while self.epoch < cfg.epochs and not stopped:
            t0, seen = time.perf_counter(), 0
            bar = tqdm(total=len(self.train), initial=self.step_in_epoch, desc=f"Epoch {self.epoch + 1}/{cfg.epochs}",
                       unit="batch", disable=not cfg.progress, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
            for batch in self.train.epoch(self.epoch, self.step_in_epoch):
                if not self._budget_left(t0):
                    stopped = True
                    break
                self.train_step(batch)
                seen += len(batch[1])
                r = self.running()
                bar.set_postfix(loss=f"{r['loss']:.4f}", acc=f"{100 * r['accuracy']:.2f}%",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
                bar.update()
            bar.close()
            self.elapsed += time.perf_counter() - t0
            if stopped and self.step_in_epoch < len(self.train):
                self.save("last")  # a clean mid-epoch checkpoint: --resume continues from here
                print(f"dlforge: stopped early at step {self.step} (--max-steps/--max-time); "
                      f"checkpoint {self.run.checkpoint('last')}", file=sys.stderr)
                break
            record = self._end_epoch(seen / max(time.perf_counter() - t0, 1e-9))
        if self.tb:
            self.tb.close()
        return record

    def _end_epoch(self, images_per_s: float) -> dict:
        record = {"epoch": self.epoch + 1, "step": self.step, **self.running(), "images_per_s": images_per_s,
                  "lr": self.opt.param_groups[0]["lr"], "time": self.elapsed}
        if self.evaluate is not None:
            record.update({f"val_{k}": v for k, v in self.evaluate(self.model).items()})
        line = f"[Epoch {record['epoch']}] loss = {record['loss']:.4f} | accuracy = {100 * record['accuracy']:.2f}%"
        if "val_loss" in record:
            line += f" | val_loss = {record['val_loss']:.4f} | val_accuracy = {100 * record['val_accuracy']:.2f}%"
        print(line, flush=True)
        self.run.log(record)
        if self.tb:
            for k, v in record.items():
                self.tb.add_scalar(k, v, self.step)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.sums = {"loss": 0.0, "correct": 0, "count": 0}
        score = record.get("val_loss", record["loss"])
        improved = self.best is None or (math.isfinite(score) and score < self.best)
        if improved:
            self.best = score
        self.save("last")
        if improved:
            self.save("best")
        return record

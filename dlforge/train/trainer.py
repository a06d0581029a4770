"""The training loop. It knows tasks (batch -> loss), never a model file; evaluation plugs in as a
callback. Checkpoints at every epoch end and at any early stop; `resume()` continues exactly, also after
a kill at any instant. Under torchrun the same loop runs data-parallel (train/distributed.py).

A task may carry state across batches (`state_tensors()` -> tensors named task.*, `load_state_tensors()`);
`state_batch_dim` names its batch dimension, so that ranks can gather and slice it."""
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
from dlforge.runs import Run, atomic_duplicate
from dlforge.train import checkpoint as ckpt
from dlforge.train import distributed, interrupt

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")


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
    lr_schedule: str = "constant"   # cosine: lr decays to min_lr_ratio·lr by the end of the budget
    warmup_steps: int = 0           # linear warm-up from lr/warmup_steps to lr
    min_lr_ratio: float = 0.1
    decay_steps: int | None = None  # the cosine's length in steps (default: the budget, see Trainer.progress)
    beta2: float = 0.999            # adam / adamw second-moment decay (0.99 suits small language models)
    eval_every: int | None = None   # evaluate every N steps (else at each epoch's end)
    eval_batch_size: int = 256
    tensorboard: bool = False
    progress: bool = True
    init_from: str | None = None    # start from these weights (safetensors, or a torch file read weights-only)

    def __post_init__(self) -> None:
        checks = [("--optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
                  ("--precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
                  ("--epochs", self.epochs >= 1, "at least 1"), ("--batch-size", self.batch_size >= 1, "at least 1"),
                  ("--lr", self.lr > 0, "a positive number"), ("--weight-decay", self.weight_decay >= 0, "0 or more"),
                  ("--max-steps", self.max_steps is None or self.max_steps >= 1, "at least 1"),
                  ("--max-time", self.max_time is None or self.max_time > 0, "a positive number of minutes"),
                  ("--grad-clip", self.grad_clip is None or self.grad_clip > 0, "a positive number"),
                  ("--lr-schedule", self.lr_schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
                  ("--warmup-steps", self.warmup_steps >= 0, "0 or more"),
                  ("--min-lr-ratio", 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]"),
                  ("--beta2", 0 < self.beta2 < 1, "a number in (0, 1)"),
                  ("--eval-every", self.eval_every is None or self.eval_every >= 1, "at least 1"),
                  ("--decay-steps", self.decay_steps is None or self.decay_steps >= 1, "at least 1")]
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
    betas = (0.9, cfg.beta2)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, cfg.lr, betas, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, cfg.lr, betas, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.RMSprop(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    """Multiplier of cfg.lr at optimiser step `step` (0-based) with `progress` in [0, 1] of the budget:
    linear warm-up min(1, (step+1)/warmup), times for cosine r + (1-r)·½(1 + cos(π·progress))
    (Loshchilov & Hutter, SGDR), r = min_lr_ratio."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "constant":
        return warm
    p = min(max(progress, 0.0), 1.0)
    r = cfg.min_lr_ratio
    return warm * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p)))


def _to(batch, device: torch.device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


class Trainer:
    def __init__(self, task: Any, model: torch.nn.Module, train: BatchLoader, cfg: TrainConfig, run: Run,
                 evaluate: Callable[[torch.nn.Module], dict] | None = None, meta: dict | None = None,
                 resume_hint: str | None = None):
        self.task, self.cfg, self.run, self.train, self.evaluate = task, cfg, run, train, evaluate
        self.resume_hint = resume_hint  # how to continue after Ctrl-C (default: the `dlforge train` command)
        tune_allocator()
        if distributed.from_env().size > cfg.batch_size:
            raise DlforgeError(f"--batch-size {cfg.batch_size}: the global batch needs at least one sample per "
                               f"process ({distributed.from_env().size} processes)")
        self.world, self.device = distributed.setup(pick_device(cfg.device))
        if cfg.init_from:  # a resumed run then replaces these with its own checkpoint
            ckpt.init_weights(model, cfg.init_from)
        self.model = model.to(self.device)  # what is evaluated and saved; self.net is what trains
        self.net = distributed.wrap(self.model, self.device) if self.world.active else self.model
        distributed.seed_rank(cfg.seed, self.world)
        self.opt = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad], self.device)
        self.meta = meta or {}
        self.epoch, self.step_in_epoch, self.step, self.elapsed = 0, 0, 0, 0.0
        self.best: float | None = None
        self.best_step: int | None = None
        self.records = 0  # lines logged to metrics.jsonl; a resume drops those logged after its checkpoint
        self.resumed = False
        self.sums = {"loss": 0.0, "correct": 0, "count": 0}
        self.window = {"loss": 0.0, "correct": 0, "count": 0}  # since the last step evaluation (eval_every)
        self.unit, self.units = getattr(task, "unit", "img"), getattr(task, "units", "images")
        self._t0 = time.perf_counter()
        self.tb = self._tensorboard() if cfg.tensorboard and self.world.main else None
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
        """Every rank calls it (a task's per-row state is gathered from all of them); rank 0 writes."""
        meta = {**self.meta, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step,
                "elapsed": self.elapsed, "best": self.best, "best_step": self.best_step, "records": self.records,
                "sums": self.sums, "window": self.window, "train": asdict(self.cfg)}
        extra = self.task.state_tensors() if hasattr(self.task, "state_tensors") else {}
        dim = getattr(self.task, "state_batch_dim", None)
        if self.world.active and dim is not None:
            extra = distributed.gather_rows(extra, dim, self.world)
        if self.world.active:
            extra = {**extra, **distributed.rng_states(self.world)}
        distributed.from_main(lambda: ckpt.save_checkpoint(self.run.checkpoint(which), self.model, meta, self.opt,
                                                           extra), self.world)

    def resume(self) -> None:
        """Continue from the last checkpoint, exactly. A run stopped before its first checkpoint starts again."""
        path = self.run.checkpoint("last")
        if not path.is_file() and (self.run.path / "config.json").is_file():
            if self.world.main:
                print(f"dlforge: note: {path} does not exist yet (the run stopped before its first checkpoint); "
                      f"starting from step 0", file=sys.stderr)
            return
        tensors, meta = ckpt.load_checkpoint(path)
        if meta.get("model", {}).get("name") != self.meta.get("model", {}).get("name"):
            raise DlforgeError(f"{path}: checkpoint of model {meta.get('model', {}).get('name')!r}, "
                               f"not {self.meta.get('model', {}).get('name')!r}")
        trained_with = meta.get("train", {}).get("optimizer")
        if trained_with and trained_with != self.cfg.optimizer:
            raise DlforgeError(f"--optimizer {self.cfg.optimizer}: this run was trained with {trained_with}; "
                               f"resume it with the same optimizer")
        ckpt.restore_model(self.model, tensors, path)
        ckpt.restore_optimizer(self.opt, tensors, meta)
        ckpt.restore_rng(tensors)
        distributed.restore_rng(tensors, self.world, self.cfg.seed, meta["step"])
        if hasattr(self.task, "load_state_tensors"):
            dim = getattr(self.task, "state_batch_dim", None)
            if self.world.active and dim is not None:  # this rank's rows of the global batch's state
                task = {k: v for k, v in tensors.items() if k.startswith("task.")}
                tensors = {**tensors, **distributed.slice_rows(task, dim, self.world)}
            self.task.load_state_tensors(tensors, self.device)
        self.epoch, self.step_in_epoch, self.step = meta["epoch"], meta["step_in_epoch"], meta["step"]
        self.elapsed, self.best, self.sums = meta["elapsed"], meta["best"], meta["sums"]
        self.best_step = meta.get("best_step")
        self.window = meta.get("window", {"loss": 0.0, "correct": 0, "count": 0})
        self.resumed = True
        if self.world.main:
            self.records = self.run.truncate_metrics(self.step, meta.get("records"))
            self._repair(meta)

    def _repair(self, meta: dict | None) -> None:
        """Undo what a kill at any instant can leave behind: lines logged after the checkpoint (see resume),
        temporary files of an interrupted write, a best checkpoint not yet linked to the last one that became
        the best. A new run (meta None) starts with no lines and no temporaries."""
        for tmp in self.run.checkpoints.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        if meta is None:
            self.records = self.run.truncate_metrics(0, 0)
            return
        best = self.run.checkpoint("best")
        if meta.get("best_step") == meta["step"] and (ckpt.read_meta(best) or {}).get("step") != meta["step"]:
            atomic_duplicate(self.run.checkpoint("last"), best)

    # ------------------------------------------------------------ the loop
    def _elapsed_now(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0)

    def _tick(self) -> None:
        """Fold the time since _t0 into elapsed (training time: what --max-time and checkpoints count)."""
        now = time.perf_counter()
        self.elapsed, self._t0 = self.elapsed + (now - self._t0), now

    def _budget_left(self) -> bool:
        cfg = self.cfg
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return False
        if cfg.max_time is None:
            return True
        # ranks must stop at the same step: rank 0's clock decides
        return distributed.from_main(lambda: self._elapsed_now() < cfg.max_time * 60, self.world)

    def progress(self) -> float:
        """The share of the budget used, in [0, 1]: steps of decay_steps, else of min(max_steps,
        epochs·len(loader)) and, with max_time, the share of that time (whichever is further), so that a
        cosine decays fully by the end of the budget."""
        if self.cfg.decay_steps is not None:
            return self.step / self.cfg.decay_steps
        total = self.cfg.epochs * len(self.train)
        if self.cfg.max_steps is not None:
            total = min(total, self.cfg.max_steps)
        p = self.step / max(total, 1)
        if self.cfg.max_time is not None:
            p = max(p, self._elapsed_now() / (self.cfg.max_time * 60))
        return p

    def _lr(self) -> float:
        lr = self.cfg.lr * lr_factor(self.cfg, self.step, self.progress())
        if self.cfg.max_time is not None:  # the schedule follows the clock: rank 0's, for every rank
            lr = distributed.from_main(lambda: lr, self.world)
        return lr

    def train_step(self, batch) -> int:
        """One optimiser step on a global batch (this rank's slice of it under torchrun).
        -> the number of samples (images, tokens) it saw, over all ranks."""
        self.net.train()
        for g in self.opt.param_groups:
            g["lr"] = self._lr()
        local, counts = distributed.shard(batch, self.world)
        with autocast(self.cfg.precision, self.device):
            loss, stats = self.task.step(self.net, _to(local, self.device))
        value, n = loss.item(), stats["count"] if counts else 0
        correct = int(stats.get("correct", 0)) if counts else 0
        if self.world.active:
            # the loss is a mean over this rank's n samples; DDP averages gradients over ranks, so weight it
            # by n·W/N to get the gradient of the mean over the global batch's N samples
            total, correct, n_all = distributed.all_sum([value * n if n else 0.0, correct, n], self.device)
            if n_all * 1.0 != n * self.world.size:
                loss = loss * (n * self.world.size / n_all)
            value, n, correct = total / max(n_all, 1), int(n_all), int(correct)
        if not math.isfinite(value):
            raise DlforgeError(f"loss became {value} at step {self.step + 1}; the last good checkpoint "
                               f"({self.run.checkpoint('last')}) is kept — try a lower --lr or --grad-clip")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        if hasattr(self.task, "after_step"):  # e.g. DenoiseTask's moving average of the weights
            self.task.after_step(self.model)
        for sums in (self.sums, self.window):
            sums["loss"] += value * n
            sums["correct"] += correct
            sums["count"] += n
        self.step += 1
        self.step_in_epoch += 1
        return n

    def running(self, sums: dict | None = None) -> dict:
        sums = sums or self.sums
        n = max(sums["count"], 1)
        if not getattr(self.task, "reports_accuracy", True):  # e.g. denoising: no classes to be right about
            return {"loss": sums["loss"] / n}
        return {"loss": sums["loss"] / n, "accuracy": sums["correct"] / n}

    def fit(self) -> dict:
        """Train until the epochs, --max-steps or --max-time run out. -> the last epoch's record.
        Ctrl-C or SIGTERM: a checkpoint after the current step, then TrainingInterrupted (train/interrupt.py)."""
        with interrupt.StopOnSignal(announce=self.world.main) as self.signals:
            return self._fit()

    def _fit(self) -> dict:
        cfg, record = self.cfg, {}
        stopped = interrupted = False
        if not self.resumed and self.world.main:  # an attempt killed before its first checkpoint left nothing
            self._repair(None)
        while self.epoch < cfg.epochs and not stopped:
            self._t0 = start = time.perf_counter()
            seen = 0
            bar = tqdm(total=len(self.train), initial=self.step_in_epoch, desc=f"Epoch {self.epoch + 1}/{cfg.epochs}",
                       unit="batch", disable=not cfg.progress or not self.world.main, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
            for batch in self.train.epoch(self.epoch, self.step_in_epoch):
                if not self._budget_left():
                    stopped = True
                    break
                if self._signalled():
                    stopped = interrupted = True
                    break
                seen += self.train_step(batch)
                r = self.running()
                bar.set_postfix({"loss": f"{r['loss']:.4f}",
                                 **({"acc": f"{100 * r['accuracy']:.2f}%"} if "accuracy" in r else {}),
                                 f"{self.unit}_s": f"{seen / (time.perf_counter() - start):.0f}"}, refresh=False)
                bar.update()
                if cfg.eval_every and self.evaluate is not None and self.step % cfg.eval_every == 0:
                    self._eval_step(bar)
            bar.close()
            rate = seen / max(time.perf_counter() - start, 1e-9)
            if stopped and self.step_in_epoch < len(self.train):
                if cfg.eval_every and self.evaluate is not None and self.window["count"] and not interrupted:
                    self._eval_step(None)  # the budget's last steps are often the best ones
                self._tick()
                self.save("last")  # a clean mid-epoch checkpoint: --resume continues from here
                if self.world.main and not interrupted:
                    print(f"dlforge: stopped early at step {self.step} (--max-steps/--max-time); "
                          f"checkpoint {self.run.checkpoint('last')}", file=sys.stderr)
                break
            self._tick()
            record = self._end_epoch(rate)
        interrupted = interrupted or self._signalled()  # e.g. during the last epoch's evaluation
        if self.tb:
            self.tb.close()
        distributed.teardown()
        if interrupted:  # no final evaluation: the user asked to stop
            raise self._interrupted()
        return record

    def _signalled(self) -> bool:
        """Whether Ctrl-C / SIGTERM asked to stop; rank 0's signal decides, so that ranks stop at one step."""
        return bool(distributed.from_main(lambda: self.signals.requested, self.world))

    def _interrupted(self) -> interrupt.TrainingInterrupted:
        """The exception that ends an interrupted fit; rank 0 says (on its own line) what was kept."""
        changed = {k: v for k, v in asdict(self.cfg).items() if v != getattr(TrainConfig, k)}
        hint = self.resume_hint or interrupt.resume_command(self.meta.get("model", {}).get("name", "MODEL"),
                                                             self.run.path, changed)
        e = interrupt.TrainingInterrupted(self.step, self.run.checkpoint("last"), hint)
        if self.world.main:
            print(f"dlforge: {e}", file=sys.stderr, flush=True)
        return e

    def _log(self, record: dict) -> None:
        self.records += 1
        if not self.world.main:
            return
        self.run.log(record)
        if self.tb:
            for k, v in record.items():
                self.tb.add_scalar(k, v, self.step)

    def _keep(self, score: float) -> None:
        """Save last, and best when `score` (validation loss) improved."""
        improved = self.best is None or (math.isfinite(score) and score < self.best)
        if improved:
            self.best, self.best_step = score, self.step
        self.save("last")
        if improved:  # the same bytes: link rather than serialise the model and optimiser again
            distributed.from_main(self._link_best, self.world)

    def _link_best(self) -> None:
        try:
            atomic_duplicate(self.run.checkpoint("last"), self.run.checkpoint("best"))
        except OSError as e:
            raise DlforgeError(f"{self.run.checkpoint('best')}: cannot save checkpoint ({e.strerror}); "
                               f"the previous checkpoint is kept") from None

    def _validate(self) -> dict:
        """The evaluation callback's figures, on the unwrapped model: computed by rank 0, known to all."""
        return {f"val_{k}": v for k, v in distributed.from_main(lambda: self.evaluate(self.model), self.world).items()}

    def _eval_step(self, bar) -> None:
        """Every eval_every steps: training loss since the last one, validation figures, checkpoints."""
        record = {"step": self.step, "epoch": self.epoch + 1, **self.running(self.window),
                  "lr": self.opt.param_groups[0]["lr"], "time": self._elapsed_now()}
        record.update(self._validate())
        extra = "".join(f" | val_{k} = {record['val_' + k]:.4f}" for k in ("perplexity", "bpc", "exact_match")
                        if "val_" + k in record)
        if self.world.main:
            (bar.write if bar is not None else print)(
                f"[Step {self.step}] loss = {record['loss']:.4f} | val_loss = {record['val_loss']:.4f}{extra}")
        self._log(record)
        self.window = {"loss": 0.0, "correct": 0, "count": 0}
        self._tick()  # checkpoints carry the time used so far
        self._keep(record["val_loss"])

    def _end_epoch(self, rate: float) -> dict:
        step_eval = self.cfg.eval_every and self.evaluate is not None
        record = {"epoch": self.epoch + 1, "step": self.step, **self.running(), f"{self.units}_per_s": rate,
                  "lr": self.opt.param_groups[0]["lr"], "time": self.elapsed}
        if self.evaluate is not None and not step_eval:
            record.update(self._validate())
        line = f"[Epoch {record['epoch']}] loss = {record['loss']:.4f}"
        if "accuracy" in record:
            line += f" | accuracy = {100 * record['accuracy']:.2f}%"
        if "val_loss" in record:
            line += f" | val_loss = {record['val_loss']:.4f}"
        if "val_accuracy" in record:
            line += f" | val_accuracy = {100 * record['val_accuracy']:.2f}%"
        if self.world.main:
            print(line, flush=True)
        self._log(record)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.sums = {"loss": 0.0, "correct": 0, "count": 0}
        if step_eval:
            self.save("last")
        else:
            self._keep(record.get("val_loss", record["loss"]))
        return record

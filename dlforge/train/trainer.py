"""The training loop. It knows tasks (batch -> loss), never a model file; evaluation plugs in as a
callback. Checkpoints at every epoch end and at any early stop; `resume()` continues exactly, also after
a kill at any instant. Under torchrun the same loop runs data-parallel (train/distributed.py).

A task may carry state across batches (`state_tensors()` -> tensors named task.*, `load_state_tensors()`);
`state_batch_dim` names the batch dimension of its per-row state (task.state.*), so that ranks can gather and
slice it; its other tensors (a moving average of the weights, task.ema.*) are the same on every rank."""
from __future__ import annotations

import contextlib
import math
import numbers
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable

import numpy as np
import torch

from dlforge.data.loader import BatchLoader
from dlforge.errors import DlforgeError
from dlforge.perf import denormals_flushed, tune_allocator
from dlforge.runs import Run, atomic_duplicate
from dlforge.train import checkpoint as ckpt
from dlforge.train import distributed, interrupt
from dlforge.train.callbacks import Callback, EarlyStopping
from dlforge.train.progress import progress_bar
from dlforge.train.tasks import ROW_STATE, Task

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
DECAY_ON = ("all", "matrices")  # --weight-decay-on


def is_int(v) -> bool:
    """A whole number as Python takes one (numpy's too), not a bool: what an integer argument must be."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A real number (an int, a float, numpy's), not a bool: what a float argument must be."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_field_types(config) -> None:
    """Each field of a config dataclass (TrainConfig, each recipe's DataConfig) is of its type: an int, float, str
    or bool field, optionally None. A NumPy number counts, and is kept as the Python one, for config.json. From
    Python, dlforge.train(max_steps="ten"), seed=1.5 or img_size="8" failed inside torch or a comparison with a
    TypeError instead of naming the option."""
    kinds = {"int": (numbers.Integral, int, "an integer"), "float": (numbers.Real, float, "a number"),
             "str": (str, str, "a string"), "bool": ((bool, np.bool_), bool, "True or False")}
    for f in fields(config):
        value, kind = getattr(config, f.name), str(f.type).replace(" | None", "")
        if (value is None and "None" in str(f.type)) or kind not in kinds:
            continue
        want, cast, words = kinds[kind]
        if not isinstance(value, want) or (kind != "bool" and isinstance(value, (bool, np.bool_))):
            raise DlforgeError(f"--{f.name.replace('_', '-')}: expected {words}, got {value!r}")
        setattr(config, f.name, cast(value))


SEED_MAX = 2 ** 63 - 1  # torch.Generator's seeds are 64-bit: a larger one was an OverflowError traceback


def check_seed(seed: int) -> int:
    """The one range of every --seed (training, sampling, generation, evaluation)."""
    if not is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise DlforgeError(f"--seed: expected 0 .. 2^63 - 1, got {seed!r}")  # "a" was a TypeError
    return seed


@dataclass
class TrainConfig:
    epochs: int | None = None       # None: the reference's 5, unless --max-steps / --max-time decide alone
    # the reference's other globals: BATCH_SIZE 64, LR 1e-3, WD 1e-4
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    weight_decay_on: str = "all"    # matrices: not on biases and norm gains (1-D tensors), as nanoGPT and HF
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
    grad_accum: int = 1             # run each batch as this many micro-batches (less memory, the same step)
    early_stop: int | None = None   # stop after this many evaluations without a better validation loss

    def total_epochs(self, batches_per_epoch: int) -> float:
        """The epochs the run may take: --epochs, else as many as --max-steps needs, else unbounded under
        --max-time alone (the clock decides), else the reference's 5."""
        if self.epochs is not None:
            return self.epochs
        if self.max_steps is not None:
            return math.ceil(self.max_steps / max(batches_per_epoch, 1))
        return math.inf if self.max_time is not None else 5

    def __post_init__(self) -> None:
        check_field_types(self)
        check_seed(self.seed)
        checks = [("--optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
                  ("--precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
                  ("--epochs", self.epochs is None or self.epochs >= 1, "at least 1"), ("--batch-size", self.batch_size >= 1, "at least 1"),
                  ("--lr", 0 < self.lr < math.inf, "a positive number"),
                  ("--weight-decay", 0 <= self.weight_decay < math.inf, "0 or more"),
                  ("--weight-decay-on", self.weight_decay_on in DECAY_ON, f"one of {', '.join(DECAY_ON)}"),
                  ("--max-steps", self.max_steps is None or self.max_steps >= 1, "at least 1"),
                  ("--max-time", self.max_time is None or 0 < self.max_time < math.inf, "a positive number of minutes"),
                  ("--grad-clip", self.grad_clip is None or 0 < self.grad_clip < math.inf, "a positive number"),
                  ("--lr-schedule", self.lr_schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
                  ("--warmup-steps", self.warmup_steps >= 0, "0 or more"),
                  ("--min-lr-ratio", 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]"),
                  ("--beta2", 0 < self.beta2 < 1, "a number in (0, 1)"),
                  ("--eval-every", self.eval_every is None or self.eval_every >= 1, "at least 1"),
                  ("--decay-steps", self.decay_steps is None or self.decay_steps >= 1, "at least 1"),
                  ("--grad-accum", self.grad_accum >= 1 and self.grad_accum <= self.batch_size,
                   f"1 .. --batch-size ({self.batch_size})"),
                  ("--early-stop", self.early_stop is None or self.early_stop >= 1, "at least 1 evaluation"),
                  ("--eval-batch-size", self.eval_batch_size >= 1, "at least 1")]  # 0 trained, then crashed
        for opt, ok, want in checks:
            if not ok:
                raise DlforgeError(f"{opt}: expected {want}, got {getattr(self, opt[2:].replace('-', '_'))!r}")


# options that mean something only with another's value: given without it, each was silently ignored
APPLIES_WITH = {"beta2": ("optimizer", ("adam", "adamw")), "momentum": ("optimizer", ("sgd", "rmsprop")),
                "min_lr_ratio": ("lr_schedule", ("cosine",)), "decay_steps": ("lr_schedule", ("cosine",))}


def check_applies(cfg: TrainConfig, given: Iterable[str]) -> None:
    """Refuse an option given (`given`: the names the user set) that this run's other choices ignore
    (--beta2 with sgd, --min-lr-ratio with a constant rate), naming both. One left at its default changes
    nothing and passes: a Python caller may hand back a whole saved config["train"], which holds them all."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name in given:
        if name in APPLIES_WITH and getattr(cfg, name) != defaults[name]:
            other, values = APPLIES_WITH[name]
            if getattr(cfg, other) not in values:
                flag = other.replace("_", "-")
                raise DlforgeError(f"--{name.replace('_', '-')}: applies to --{flag} {' or '.join(values)} only; "
                                   f"this run's --{flag} is {getattr(cfg, other)}")


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
    if dev.type not in ("cpu", "cuda", "mps"):  # torch parses xpu, meta, …, and fails later on .to()
        raise DlforgeError(f"--device: expected auto, cpu, cuda, cuda:N or mps; got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DlforgeError("--device cuda: no CUDA device is available here (try --device auto)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        # was torch's RuntimeError traceback ("not linked with support for mps devices") from every command
        raise DlforgeError("--device mps: no Apple GPU (MPS) is available here (try --device auto)")
    return dev


def autocast(precision: str, device: torch.device) -> torch.autocast:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision == "fp16" and device.type == "cpu":
        raise DlforgeError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def cpu_has_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def parameter_groups(cfg: TrainConfig, model: torch.nn.Module) -> list:
    """The trained parameters, as the optimiser takes them. --weight-decay-on matrices: two groups, weight decay
    on the tensors of two or more dimensions (weight matrices, embeddings, convolution kernels) and none on the
    rest (biases, norm gains and shifts), nanoGPT's and Hugging Face's rule; one group otherwise, and where there
    is no weight decay to apply."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay_on == "all" or not cfg.weight_decay:
        return params
    return [{"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


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
    """Multiplier of cfg.lr at optimiser step `step` (0-based) with `progress` in [0, 1] of the budget after
    the warm-up (Trainer.progress): linear warm-up (step+1)/warmup for the first warmup steps, then for cosine
    r + (1-r)·½(1 + cos(π·progress)) (Loshchilov & Hutter, SGDR), r = min_lr_ratio. The cosine starts where
    the warm-up ends, as in nanoGPT and Hugging Face's cosine-with-warm-up: multiplying the two instead (as
    before) decayed the rate during the warm-up and ran it below theirs all along."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    p = min(max(progress, 0.0), 1.0)
    r = cfg.min_lr_ratio
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p))


def _to(batch, device: torch.device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


class Trainer:
    """task: what a batch means (train/tasks.py); evaluate(model) -> validation figures ("loss" first, the
    monitored metric: lower is better); callbacks: events around the loop (train/callbacks.py)."""

    def __init__(self, task: Task, model: torch.nn.Module, train: BatchLoader, cfg: TrainConfig, run: Run,
                 evaluate: Callable[[torch.nn.Module], dict] | None = None, meta: dict | None = None,
                 callbacks: list[Callback] | tuple = (), resume_hint: str | None = None):
        self.task, self.cfg, self.run, self.train, self.evaluate = task, cfg, run, train, evaluate
        self.resume_hint = resume_hint  # how to continue after Ctrl-C (default: the `dlforge train` command)
        self.callbacks = list(callbacks) + ([EarlyStopping(cfg.early_stop)] if cfg.early_stop else [])
        if cfg.grad_accum > 1 and not task.splittable:
            raise DlforgeError(f"--grad-accum {cfg.grad_accum}: a {task.name} batch cannot be split into "
                               f"micro-batches with the same result here; use a smaller --batch-size instead")
        if cfg.early_stop and evaluate is None:
            raise DlforgeError("--early-stop: this run has no validation data to watch (--val-fraction 0?)")
        tune_allocator()
        if distributed.from_env().size > cfg.batch_size:
            raise DlforgeError(f"--batch-size {cfg.batch_size}: the global batch needs at least one sample per "
                               f"process ({distributed.from_env().size} processes)")
        self.world, self.device = distributed.setup(pick_device(cfg.device))
        autocast(cfg.precision, self.device)  # fp16 on a CPU refused now, before the run is written (not at step 1)
        if cfg.init_from:  # a resumed run then replaces these with its own checkpoint
            ckpt.init_weights(model, cfg.init_from)
        self.model = model.to(self.device)  # what is evaluated and saved; self.net is what trains
        self.net = distributed.wrap(self.model, self.device) if self.world.active else self.model
        distributed.seed_rank(cfg.seed, self.world)
        self.opt = build_optimizer(cfg, parameter_groups(cfg, model), self.device)
        self.meta = meta or {}
        self.epoch, self.step_in_epoch, self.step, self.elapsed = 0, 0, 0, 0.0
        self.best: float | None = None
        self.best_step: int | None = None
        self.records = 0  # lines logged to metrics.jsonl; a resume drops those logged after its checkpoint
        self.evals_since_best = 0  # validations in a row without a better score (--early-stop)
        self.stop_reason: str | None = None  # set by request_stop (a callback): the loop stops cleanly
        self.resumed = False
        self.sums = {"loss": 0.0, "correct": 0, "count": 0}
        self.window = {"loss": 0.0, "correct": 0, "count": 0}  # since the last step evaluation (eval_every)
        self.unit, self.units = task.unit, task.units
        self.epochs = cfg.total_epochs(len(train))
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
                "sums": self.sums, "window": self.window, "train": asdict(self.cfg),
                "evals_since_best": self.evals_since_best}
        extra = self.task.state_tensors()
        dim = self.task.state_batch_dim
        if self.world.active and dim is not None:  # the per-row state (task.state.*) of the global batch
            rows = {k: v for k, v in extra.items() if k.startswith(ROW_STATE)}
            shared = {k: v for k, v in extra.items() if k not in rows}
            extra = {**shared, **distributed.gather_rows(rows, dim, self.world)}  # every rank calls it: a collective
        if self.world.active:
            extra = {**extra, **distributed.rng_states(self.world)}
        distributed.from_main(lambda: ckpt.save_checkpoint(self.run.checkpoint(which), self.model, meta, self.opt,
                                                           extra), self.world)

    def resume(self) -> None:
        """Continue from the last checkpoint, exactly. A run stopped before its first checkpoint starts again."""
        path = self.run.checkpoint("last")
        if not path.is_file() and (trained := self.run.trained_without_last()):  # it started again from step 0,
            # and overwrote the best checkpoint, the metrics and the report of the run it had been
            best = self.run.checkpoint("best").is_file()  # the way on from the best only where there is one
            raise DlforgeError(f"{path}: missing, but this run has trained ({trained}); restore it"
                               + (" (or copy checkpoints/best.safetensors to it, to go on from the best)" if best else "")
                               + ", or train into another --out")
        if not path.is_file() and (self.run.path / "config.json").is_file():
            if self.world.main:
                print(f"dlforge: note: {path} does not exist yet (the run stopped before its first checkpoint); "
                      f"starting from step 0", file=sys.stderr)
            return
        tensors, meta = ckpt.load_checkpoint(path)
        if meta.get("model", {}).get("name") != self.meta.get("model", {}).get("name"):
            raise DlforgeError(f"{path}: checkpoint of model {meta.get('model', {}).get('name')!r}, "
                               f"not {self.meta.get('model', {}).get('name')!r}")
        train = meta.get("train", {})
        trained_with = train.get("optimizer")
        if trained_with and trained_with != self.cfg.optimizer:
            raise DlforgeError(f"--optimizer {self.cfg.optimizer}: this run was trained with {trained_with}; "
                               f"resume it with the same optimizer")
        groups = meta.get("optimizer", {}).get("param_groups", [])
        if len(groups) != len(self.opt.param_groups):  # --weight-decay-on changes how the parameters are grouped
            raise DlforgeError(f"--weight-decay-on {self.cfg.weight_decay_on}: this run was trained with "
                               f"--weight-decay-on {train.get('weight_decay_on', 'all')} and --weight-decay "
                               f"{train.get('weight_decay')}; resume it with the same")
        ckpt.restore_model(self.model, tensors, path)
        ckpt.restore_optimizer(self.opt, tensors, meta)
        ckpt.restore_rng(tensors)
        distributed.restore_rng(tensors, self.world, self.cfg.seed, meta["step"])
        dim = self.task.state_batch_dim
        if self.world.active and dim is not None:  # this rank's rows of the global batch's state
            rows = {k: v for k, v in tensors.items() if k.startswith(ROW_STATE)}
            tensors = {**tensors, **distributed.slice_rows(rows, dim, self.world)}
        self.task.load_state_tensors(tensors, self.device)
        self.epoch, self.step_in_epoch, self.step = meta["epoch"], meta["step_in_epoch"], meta["step"]
        self.elapsed, self.best, self.sums = meta["elapsed"], meta["best"], meta["sums"]
        self.best_step = meta.get("best_step")
        self.evals_since_best = meta.get("evals_since_best", 0)
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
        """The share of the budget used after the warm-up, in [0, 1]: steps past the warm-up out of
        decay_steps, else out of min(max_steps, epochs·len(loader)), less the warm-up's; with max_time, the
        share of that time if further (the warm-up's seconds are not known ahead: a clock's cosine counts
        from the start), so that a cosine decays fully by the end of the budget."""
        w = self.cfg.warmup_steps
        if self.cfg.decay_steps is not None:
            return max(0, self.step - w) / max(self.cfg.decay_steps - w, 1)
        total = self.epochs * len(self.train)
        if self.cfg.max_steps is not None:
            total = min(total, self.cfg.max_steps)
        p = max(0, self.step - w) / max(total - w, 1) if math.isfinite(total) else 0.0
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
        self.opt.zero_grad(set_to_none=True)
        if self.cfg.grad_accum > 1:
            value, n, correct = self._accumulate(_to(local, self.device), counts)
        else:
            with autocast(self.cfg.precision, self.device):
                loss, stats = self.task.step(self.net, _to(local, self.device))
            value, n = loss.item(), stats["count"] if counts else 0
            correct = int(stats.get("correct", 0)) if counts else 0
            if self.world.active:
                # the loss is a mean over this rank's n samples; DDP averages gradients over ranks, so weight
                # it by n·W/N to get the gradient of the mean over the global batch's N samples
                total, correct, n_all = distributed.all_sum([value * n if n else 0.0, correct, n], self.device)
                if n_all * 1.0 != n * self.world.size:
                    loss = loss * (n * self.world.size / n_all)
                value, n, correct = total / max(n_all, 1), int(n_all), int(correct)
            self._check_finite(value)
            loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.task.after_step(self.model)  # e.g. DenoiseTask's moving average of the weights
        for sums in (self.sums, self.window):
            sums["loss"] += value * n
            sums["correct"] += correct
            sums["count"] += n
        self.step += 1
        self.step_in_epoch += 1
        return n

    def _check_finite(self, value: float) -> None:
        if not math.isfinite(value):
            last = self.run.checkpoint("last")
            kept = (f"the last good checkpoint ({last}) is kept" if last.is_file() else
                    "the run stopped before its first checkpoint, so none is kept")
            raise DlforgeError(f"loss became {value} at step {self.step + 1}; {kept} — try a lower --lr or "
                               f"--grad-clip")

    def _accumulate(self, batch, counts: bool) -> tuple[float, int, int]:
        """--grad-accum K: the batch as K micro-batches of rows, one forward and backward each, so that only a
        K-th of the activations is alive at once. Each micro-batch's mean loss is backpropagated times its
        sample count n_i, then the gradients are divided by the batch's N = Σ n_i (summed over ranks):
        ∇ (1/N) Σ_i n_i·loss_i, the gradient of the whole batch's mean loss.
        -> (mean loss, samples, right predictions), over all ranks."""
        k = self.cfg.grad_accum
        chunks = list(zip(*(t.chunk(k) for t in batch)))
        value, n, correct = 0.0, 0, 0
        for i, chunk in enumerate(chunks):
            sync = i == len(chunks) - 1 or not self.world.active  # DDP all-reduces on the last backward only
            with (contextlib.nullcontext() if sync else self.net.no_sync()):
                with autocast(self.cfg.precision, self.device):
                    loss, stats = self.task.step(self.net, chunk)
                c = int(stats["count"])
                (loss * c).backward()
            value, n, correct = value + loss.item() * c, n + c, correct + int(stats.get("correct", 0))
        if not counts:
            value, n, correct = 0.0, 0, 0
        if self.world.active:
            value, correct, n = distributed.all_sum([value, correct, n], self.device)
            n, correct = int(n), int(correct)
        scale = (self.world.size if self.world.active else 1) / max(n, 1)  # DDP averaged over the W ranks
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        value /= max(n, 1)
        self._check_finite(value)
        return value, n, correct

    def request_stop(self, reason: str) -> None:
        """Stop after this step, with a clean checkpoint (a callback's way to end the run)."""
        self.stop_reason = reason

    def running(self, sums: dict | None = None) -> dict:
        sums = sums or self.sums
        n = max(sums["count"], 1)
        if not self.task.reports_accuracy:  # e.g. denoising: no classes to be right about
            return {"loss": sums["loss"] / n}
        return {"loss": sums["loss"] / n, "accuracy": sums["correct"] / n}

    def last_epoch(self) -> int | None:
        """The epoch in which the budget ends (None: the clock decides)."""
        if self.cfg.max_steps is not None:
            return min(self.epochs, math.ceil(self.cfg.max_steps / max(len(self.train), 1)))
        return self.epochs if math.isfinite(self.epochs) else None

    def fit(self) -> dict:
        """Train until the epochs, --max-steps or --max-time run out, or a callback stops the run.
        -> the last epoch's record. Ctrl-C or SIGTERM: a checkpoint after the current step, then
        TrainingInterrupted (train/interrupt.py)."""
        # subnormals as zero while training (dlforge/perf.py), as they were afterwards
        with denormals_flushed(), interrupt.StopOnSignal(announce=self.world.main) as self.signals:
            return self._fit()

    def _fit(self) -> dict:
        cfg, record = self.cfg, {}
        stopped = interrupted = False
        if not self.resumed and self.world.main:  # an attempt killed before its first checkpoint left nothing
            self._repair(None)
        for cb in self.callbacks:
            cb.on_start(self)
        while self.epoch < self.epochs and not stopped and self.stop_reason is None:
            self._t0 = start = time.perf_counter()
            seen = 0
            bar = progress_bar(len(self.train), self.step_in_epoch, f"Epoch {self.epoch + 1}/{self.last_epoch() or '?'}",
                               enabled=cfg.progress and self.world.main)
            for batch in self.train.epoch(self.epoch, self.step_in_epoch):
                if not self._budget_left() or self.stop_reason is not None:
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
                for cb in self.callbacks:
                    cb.on_step_end(self)
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
                    why = self.stop_reason or "stopped early (--max-steps/--max-time)"
                    print(f"dlforge: {why} at step {self.step}; checkpoint {self.run.checkpoint('last')}",
                          file=sys.stderr)
                break
            self._tick()
            record = self._end_epoch(rate)
        interrupted = interrupted or self._signalled()  # e.g. during the last epoch's evaluation
        if self.stop_reason is not None and not stopped:
            if not self.run.checkpoint("last").is_file():  # stopped in on_start: the checkpoint it names (there was
                self._tick()                                 # none, and the run could not be loaded or reported)
                self.save("last")
            if self.world.main:
                print(f"dlforge: {self.stop_reason} at step {self.step}; checkpoint {self.run.checkpoint('last')}",
                      file=sys.stderr)
        for cb in self.callbacks:
            cb.on_end(self)
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
        # --resume keeps the run's own training options and budget: the bare command continues it exactly
        hint = self.resume_hint or interrupt.resume_command(self.meta.get("model", {}).get("name", "MODEL"),
                                                             self.run.path, {})
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

    def _score(self, score: float) -> None:
        """Note a validation score (lower is better): best, best_step, evals_since_best."""
        if self.best is None or (math.isfinite(score) and score < self.best):
            self.best, self.best_step, self.evals_since_best = score, self.step, 0
        else:
            self.evals_since_best += 1

    def _keep(self) -> None:
        """Save last, and best when the score just noted was the best."""
        self.save("last")
        if self.best_step == self.step:  # the same bytes: link rather than serialise the model and optimiser again
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
        extra = "".join(f" | val_{k} = {record['val_' + k]:.4f}" for k in self.task.shown_metrics
                        if "val_" + k in record)
        if self.world.main:
            (bar.write if bar is not None else print)(
                f"[Step {self.step}] loss = {record['loss']:.4f} | val_loss = {record['val_loss']:.4f}{extra}")
        self._log(record)
        self.window = {"loss": 0.0, "correct": 0, "count": 0}
        self._tick()  # checkpoints carry the time used so far
        self._score(record["val_loss"])
        for cb in self.callbacks:
            cb.on_evaluate(self, record)
        self._keep()

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
        line += "".join(f" | val_{k} = {record['val_' + k]:.4f}" for k in self.task.shown_metrics  # as [Step N]'s
                        if "val_" + k in record)  # (an epoch's evaluation printed no perplexity, bpc, CER…)
        if self.world.main:
            print(line, flush=True)
        self._log(record)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.sums = {"loss": 0.0, "correct": 0, "count": 0}
        if step_eval:
            self.save("last")
        else:
            self._score(record.get("val_loss", record["loss"]))
            if "val_loss" in record:
                for cb in self.callbacks:
                    cb.on_evaluate(self, record)
            self._keep()
        for cb in self.callbacks:
            cb.on_epoch_end(self, record)
        return record

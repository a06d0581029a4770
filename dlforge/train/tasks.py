"""What a batch means. A task turns (model, batch) into a loss and metrics; the trainer only calls it."""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from dlforge.errors import DlforgeError

LOSSES = ("cross-entropy", "bce", "mse")
ROW_STATE = "task.state."  # the prefix of a task's per-row state: data-parallel ranks gather and slice only it


class Task:
    """The trainer's whole contract with a task; a task overrides what it needs.
    step(model, batch) -> (mean loss, {"count": samples, "correct": right predictions});
    state_tensors()/load_state_tensors(): state carried across batches, saved in checkpoints as task.*;
    state_batch_dim: the batch dimension of the per-row state named task.state.* (data-parallel ranks each hold
    rows of it), None if there is none; other task tensors are shared by all ranks;
    after_step(model): after each optimiser step (e.g. a moving average of the weights)."""
    name = "task"
    unit, units = "img", "images"     # the progress bar's rate (img/s) and the metrics' images_per_s
    reports_accuracy = True           # running accuracy in the progress bar and the epoch lines
    shown_metrics: tuple[str, ...] = ()  # validation figures printed on the [Step N] lines besides val_loss
    state_batch_dim: int | None = None
    splittable = True                 # a batch may run as micro-batches (--grad-accum) with the same result

    def step(self, model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return asdict(self)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        pass

    def after_step(self, model: torch.nn.Module) -> None:
        pass


class AveragedWeights:
    """An exponential moving average of the weights (Polyak averaging, as Keras's `use_ema` and timm's
    ModelEma keep one): decay min(ema_decay, (1 + n) / (10 + n)) at update n, updated after every optimiser
    step (after_step), saved in checkpoints as task.ema.*, used for validation (`averaged`) and loaded by the
    run's handle in place of the raw weights. The training itself is unchanged. ema_decay 0: none is kept.
    A subclass declares the `ema_decay` field and calls _init_ema() from __post_init__."""
    ema_decay: float

    def _init_ema(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise DlforgeError(f"--ema-decay: expected a number in [0, 1) (0: no moving average), got {self.ema_decay}")
        self.ema: dict[str, torch.Tensor] | None = None
        self.ema_updates = 0

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        """ema ← d·ema + (1 - d)·θ."""
        if not self.ema_decay:
            return
        params = dict(model.named_parameters())
        if self.ema is None:
            self.ema = {k: p.detach().float().clone() for k, p in params.items()}
        self.ema_updates += 1
        d = min(self.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        torch._foreach_lerp_(list(self.ema.values()), [params[k].detach().float() for k in self.ema], 1 - d)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.ema is None:
            return {}
        return {**{f"task.ema.{k}": v.detach().cpu().contiguous() for k, v in self.ema.items()},
                "task.ema_updates": torch.tensor(self.ema_updates)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        ema = {k[len("task.ema."):]: v.to(device) for k, v in tensors.items() if k.startswith("task.ema.")}
        self.ema = ema or None
        self.ema_updates = int(tensors.get("task.ema_updates", torch.tensor(0)))

    def swap_ema(self, model: torch.nn.Module) -> None:
        """Exchange the model's weights with the moving average (call twice to undo)."""
        if self.ema is None:
            return
        with torch.no_grad():
            for k, p in model.named_parameters():
                tmp = p.detach().clone()
                p.copy_(self.ema[k])
                self.ema[k].copy_(tmp)

    @contextlib.contextmanager
    def averaged(self, model: torch.nn.Module):
        """The model holds the moving average inside the block (its raw weights where none is kept yet)."""
        self.swap_ema(model)
        try:
            yield model
        finally:
            self.swap_ema(model)


@dataclass
class ClassifyTask(AveragedWeights, Task):
    """Image classification with the reference's three losses:
    cross-entropy — K-way softmax classifier (K logits);
    bce — one class (positive_class) against the rest: one logit, BCEWithLogits;
    mse — regression of the label's value (e.g. the digit 0..9): one output, MSELoss, predictions rounded.
    A moving average of the weights (AveragedWeights) is what validates, and what the run's handle loads.
    """
    num_classes: int
    loss: str = "cross-entropy"
    positive_class: int = 0
    ema_decay: float = 0.0
    name: str = "classify"

    def __post_init__(self) -> None:
        self._init_ema()
        if self.loss not in LOSSES:
            raise DlforgeError(f"--loss: expected one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.loss == "bce" and not 0 <= self.positive_class < self.num_classes:
            raise DlforgeError(f"--positive-class: expected 0..{self.num_classes - 1}, got {self.positive_class}")

    @property
    def out_features(self) -> int:
        return self.num_classes if self.loss == "cross-entropy" else 1

    def label_names(self, classes: list[str]) -> list[str]:
        """The classes the predictions are over (bce: 'not X' / 'X')."""
        if self.loss == "bce":
            return [f"not {classes[self.positive_class]}", classes[self.positive_class]]
        return list(classes)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Dataset labels -> the labels this task predicts."""
        return (y == self.positive_class).long() if self.loss == "bce" else y

    def per_sample_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # out: (B, K) or (B, 1)
        out = out.float()
        if self.loss == "cross-entropy":
            return F.cross_entropy(out, y, reduction="none")
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(out[:, 0], self.targets(y).float(), reduction="none")
        return F.mse_loss(out[:, 0], y.float(), reduction="none")

    def predictions(self, out: torch.Tensor) -> torch.Tensor:
        if self.loss == "cross-entropy":
            return out.argmax(1)
        if self.loss == "bce":
            return (out[:, 0] > 0).long()
        return out[:, 0].round().clamp(0, self.num_classes - 1).long()

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """(B, K') probabilities over label_names (mse: one-hot on the rounded value)."""
        if self.loss == "cross-entropy":
            return out.float().softmax(1)
        if self.loss == "bce":
            p = out.float()[:, 0].sigmoid()
            return torch.stack([1 - p, p], 1)
        return F.one_hot(self.predictions(out), self.num_classes).float()

    def step(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """-> (mean loss, sums for running metrics)."""
        x, y = batch
        out = model(x)
        loss = self.per_sample_loss(out, y).mean()
        correct = (self.predictions(out.detach()) == self.targets(y)).sum()
        return loss, {"correct": correct, "count": y.shape[0]}


def _detach(state):
    """A recurrent state (tensor, tuple of tensors or None) cut from the graph: truncated BPTT."""
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@dataclass
class LanguageModelTask(AveragedWeights, Task):
    """Next-token prediction. The model maps ids (B, T) to (logits (B, T, V), state); the loss is the
    mean cross-entropy per token in nats, -1/N Σ log p(x_{t+1} | x_≤t). Recurrent models (model.recurrent)
    carry their hidden state from batch to batch, detached (truncated backpropagation through time);
    the loader's reset flag starts it again from zero. A moving average of the weights (AveragedWeights)
    is what validates, and what the run's handle loads."""
    vocab_size: int
    ema_decay: float = 0.0
    name: str = "language-model"
    unit = "tok"      # the progress bar's rate: tok/s
    units = "tokens"  # ... and the metrics' tokens_per_s
    shown_metrics = ("perplexity", "bpc")
    state_batch_dim = 1  # the carried state is (layers, B, hidden): data-parallel ranks each hold rows of it
    recurrent: bool = False  # rows of a batch continue the streams of the last one's (truncated BPTT)

    def __post_init__(self) -> None:
        self._init_ema()
        self.state = None
        self.splittable = not self.recurrent  # the carried state belongs to the whole batch's rows

    def step(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        x, y = batch[0], batch[1]                   # (B, T), (B, T)
        if getattr(model, "recurrent", False):
            reset = len(batch) > 2 and bool(batch[2])
            state = self.state if not reset and _fits(self.state, x.shape[0]) else None
            logits, state = model(x, state)
            self.state = _detach(state)
        else:
            logits, _ = model(x)                    # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        correct = (logits.detach().argmax(-1) == y).sum()
        return loss, {"correct": correct, "count": y.numel()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The carried hidden state, saved in checkpoints so that --resume continues the same streams, and the
        moving average of the weights."""
        averaged = super().state_tensors()
        if self.state is None:
            return averaged
        parts = self.state if isinstance(self.state, tuple) else (self.state,)
        return {**averaged, **{f"{ROW_STATE}{i}": s.detach().cpu().contiguous() for i, s in enumerate(parts)}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        super().load_state_tensors(tensors, device)
        parts = [tensors[k].to(device) for k in sorted(k for k in tensors if k.startswith(ROW_STATE))]
        self.state = None if not parts else (parts[0] if len(parts) == 1 else tuple(parts))


def _fits(state, batch_size: int) -> bool:
    if state is None:
        return False
    first = state[0] if isinstance(state, tuple) else state
    return first.shape[1] == batch_size  # (layers, B, hidden)


@dataclass
class DenoiseTask(AveragedWeights, Task):
    """Denoising diffusion with ε-prediction (Ho et al., 2020). A batch is (x_0 (B, C, H, W) in [-1, 1],
    caption (B, L) token ids, or (B, S, D) states of a frozen text encoder); t ~ U{0..T-1}, ε ~ N(0, I),
    x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε, loss = mean w_t ‖ε - ε̂(x_t, t, caption)‖² with the Min-SNR-γ weight
    w_t = min(SNR_t, γ) / SNR_t, SNR_t = ᾱ_t / (1 - ᾱ_t) (Hang et al., 2023: the nearly clean timesteps stop
    dominating the gradient, and training converges several times faster); snr_gamma = 0 gives w_t = 1.
    Classifier-free guidance (Ho & Salimans, 2022): each caption becomes the empty one (<s> alone; zero
    states) with probability cond_drop. A moving average of the weights (AveragedWeights) is what validates
    and samples."""
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    cond_drop: float = 0.1
    ema_decay: float = 0.999
    snr_gamma: float = 5.0
    name: str = "denoise"
    reports_accuracy = False  # the trainer shows and logs no accuracy for it
    state_batch_dim = None  # the moving average is not per batch row: every rank holds the same one
    splittable = False  # t and ε are drawn per batch: micro-batches would draw other ones

    def __post_init__(self) -> None:
        from dlforge.diffusion.schedulers import DDPMScheduler
        if not 0 <= self.cond_drop < 1:
            raise DlforgeError(f"--cond-drop: expected a probability in [0, 1), got {self.cond_drop}")
        self._init_ema()
        if not (self.snr_gamma >= 0 and math.isfinite(self.snr_gamma)):
            raise DlforgeError(f"--snr-gamma: expected a number >= 0 (0: no weighting), got {self.snr_gamma}")
        self.scheduler = DDPMScheduler(self.num_train_timesteps, self.beta_schedule)
        snr = self.scheduler.alphas_cumprod / (1 - self.scheduler.alphas_cumprod)
        self.loss_weight = (snr.clamp(max=self.snr_gamma) / snr if self.snr_gamma > 0 else torch.ones_like(snr)).float()

    def drop_condition(self, cond: torch.Tensor, p: float) -> torch.Tensor:
        """Each row replaced by the null condition with probability p."""
        if p <= 0:
            return cond
        drop = torch.rand(cond.shape[0], device=cond.device) < p
        if cond.is_floating_point():
            return cond.masked_fill(drop.view(-1, *[1] * (cond.dim() - 1)), 0.0)
        keep = torch.arange(cond.shape[1], device=cond.device) == 0                  # <s> stays
        return cond.masked_fill(drop[:, None] & ~keep[None], 0)                       # 0 = <pad>

    def step(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x0, cond = batch
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = self.scheduler.add_noise(x0, eps, t)
        eps_pred = model(x_t, t, self.drop_condition(cond, self.cond_drop))
        per_image = (eps_pred.float() - eps).pow(2).flatten(1).mean(1)                # (B,)
        loss = (self.loss_weight.to(x0.device)[t] * per_image).mean()
        return loss, {"count": x0.shape[0]}


@dataclass
class Seq2SeqTask(Task):
    """Sequence to sequence with teacher forcing. A batch is (src (B, S), tgt (B, T)), both right-padded
    with pad_id; tgt = [BOS] y_1 .. y_n [EOS]. The decoder reads tgt[:, :-1] and predicts tgt[:, 1:]; the
    loss is label-smoothed cross-entropy (Szegedy et al., 2016) over the real (non-pad) target tokens:
    (1 - ε)·(-log p(y)) + ε·mean_v(-log p(v))."""
    pad_id: int = 0
    label_smoothing: float = 0.1
    name: str = "seq2seq"
    unit = "tok"
    units = "tokens"
    shown_metrics = ("exact_match",)

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise DlforgeError(f"--label-smoothing: expected a number in [0, 1), got {self.label_smoothing}")

    def trim(self, x: torch.Tensor) -> torch.Tensor:
        """Drop the columns that are padding in every row: a batch costs its longest pair, not the corpus's."""
        return x[:, :int((x != self.pad_id).sum(1).max())]

    def step(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        src, tgt = self.trim(batch[0]), self.trim(batch[1])
        logits = model(src, tgt[:, :-1])                     # (B, T-1, V)
        y = tgt[:, 1:]
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=self.pad_id,
                               label_smoothing=self.label_smoothing)
        real = y != self.pad_id
        correct = ((logits.detach().argmax(-1) == y) & real).sum()
        return loss, {"correct": correct, "count": int(real.sum())}


@dataclass
class CTCTask(Task):
    """Speech recognition with connectionist temporal classification (Graves et al., 2006). A batch is
    (features (B, T, n_mels), frames (B,), labels (B, L) right-padded, label lengths (B,)); the model maps
    (features, frames) to (logits (B, T', V + 1), frames' (B,)), blank = 0. The loss is
    -log p(y | x) = -log Σ over alignments a that collapse to y of Π_t p(a_t | x), summed over the batch and
    divided by its label characters (so long and short clips weigh by their length). No accuracy: that needs
    a decoder; the validator reports character and word error rates. zero_infinity: a clip too short for its
    transcript (after speed perturbation) adds nothing rather than an infinite loss."""
    blank: int = 0
    name: str = "speech"
    unit, units = "utt", "utterances"
    reports_accuracy = False
    shown_metrics = ("cer", "wer")

    def step(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        x, frames, y, y_len = batch
        logits, out_len = model(x, frames)                                  # (B, T', V + 1)
        logp = logits.float().log_softmax(-1).transpose(0, 1)               # (T', B, V + 1)
        loss = F.ctc_loss(logp, y, out_len, y_len, blank=self.blank, reduction="sum", zero_infinity=True)
        return loss / y_len.sum().clamp(min=1), {"count": x.shape[0]}

"""What a batch means. A task turns (model, batch) into a loss and metrics; the trainer only calls it."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from dlforge.errors import DlforgeError

LOSSES = ("cross-entropy", "bce", "mse")


@dataclass
class ClassifyTask:
    """Image classification with the reference's three losses:
    cross-entropy — K-way softmax classifier (K logits);
    bce — one class (positive_class) against the rest: one logit, BCEWithLogits;
    mse — regression of the label's value (e.g. the digit 0..9): one output, MSELoss, predictions rounded.
    """
    num_classes: int
    loss: str = "cross-entropy"
    positive_class: int = 0
    name: str = "classify"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise DlforgeError(f"--loss: expected one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.loss == "bce" and not 0 <= self.positive_class < self.num_classes:
            raise DlforgeError(f"--positive-class: expected 0..{self.num_classes - 1}, got {self.positive_class}")

    def to_dict(self) -> dict:
        return asdict(self)

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
class LanguageModelTask:
    """Next-token prediction. The model maps ids (B, T) to (logits (B, T, V), state); the loss is the
    mean cross-entropy per token in nats, -1/N Σ log p(x_{t+1} | x_≤t). Recurrent models (model.recurrent)
    carry their hidden state from batch to batch, detached (truncated backpropagation through time);
    the loader's reset flag starts it again from zero."""
    vocab_size: int
    name: str = "language-model"
    unit = "tok"      # the progress bar's rate: tok/s
    units = "tokens"  # ... and the metrics' tokens_per_s

    def __post_init__(self) -> None:
        self.state = None

    def to_dict(self) -> dict:
        return asdict(self)

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
        """The carried hidden state, saved in checkpoints so that --resume continues the same streams."""
        if self.state is None:
            return {}
        parts = self.state if isinstance(self.state, tuple) else (self.state,)
        return {f"task.state.{i}": s.detach().cpu().contiguous() for i, s in enumerate(parts)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        parts = [tensors[k].to(device) for k in sorted(k for k in tensors if k.startswith("task.state."))]
        self.state = None if not parts else (parts[0] if len(parts) == 1 else tuple(parts))


def _fits(state, batch_size: int) -> bool:
    if state is None:
        return False
    first = state[0] if isinstance(state, tuple) else state
    return first.shape[1] == batch_size  # (layers, B, hidden)

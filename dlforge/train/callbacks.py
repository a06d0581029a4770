"""Callbacks: what happens around the loop without the trainer knowing it. Each event receives the
trainer (its model, step, epoch, run, best score); a callback overrides the events it needs."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dlforge.train.trainer import Trainer


class Callback:
    def on_start(self, trainer: "Trainer") -> None:
        """Before the first step (after a resume has restored the state)."""

    def on_step_end(self, trainer: "Trainer") -> None:
        """After each optimiser step."""

    def on_evaluate(self, trainer: "Trainer", record: dict) -> None:
        """After each validation (record: the logged figures, val_* included), before the checkpoint."""

    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None:
        """After each whole epoch (record: its logged line)."""

    def on_end(self, trainer: "Trainer") -> None:
        """After the last step, whatever stopped the run."""


class EarlyStopping(Callback):
    """Stop when the monitored validation loss has not improved for `patience` evaluations in a row
    (--early-stop N). The count lives in the trainer's checkpointed state, so a resumed run stops where an
    uninterrupted one would."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_evaluate(self, trainer: "Trainer", record: dict) -> None:
        if trainer.evals_since_best >= self.patience:
            trainer.request_stop(f"early stop: val_loss has not improved for {self.patience} evaluations "
                                 f"(best {trainer.best:.4f} at step {trainer.best_step})")


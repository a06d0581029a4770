"""One module per kind of run: builds data, model and task from a run's config, trains, evaluates."""
from __future__ import annotations

from pathlib import Path

import torch

from dlforge.errors import DlforgeError
from dlforge.registry import create_model
from dlforge.runs import Run
from dlforge.train import checkpoint as ckpt


def load_model(run: Run, which: str = "best") -> tuple[torch.nn.Module, dict[str, torch.Tensor], Path]:
    """The run's model (name and keyword arguments from config.json) with the weights of checkpoint
    `which` (the last one where there is no such file). -> (model, every tensor of the checkpoint, path)."""
    cfg = run.config
    path = run.checkpoint(which) if run.checkpoint(which).is_file() else run.checkpoint("last")
    tensors, meta = ckpt.load_checkpoint(path)
    if meta.get("model", {}).get("name") != cfg["model"]["name"]:
        raise DlforgeError(f"{path}: holds model {meta.get('model', {}).get('name')!r}, the run says "
                           f"{cfg['model']['name']!r}")
    model = create_model(cfg["model"]["name"], **cfg["model"]["kwargs"])
    ckpt.restore_model(model, tensors, path)
    return model, tensors, path


def fit(trainer, resume: bool, out: str, name: str, what: str, show_params: bool = True) -> bool:
    """Resume the trainer from its run's last checkpoint when asked, say what trains on what, train.
    `what` describes the data and batches (each pipeline its own). -> whether this process reports
    (under torchrun only rank 0 does)."""
    import sys
    if resume:
        trainer.resume()
        print(f"dlforge: resuming {out} at epoch {trainer.epoch + 1}, step {trainer.step}", file=sys.stderr)
    params = f" ({sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f}M parameters)" if show_params else ""
    print(f"dlforge: training {name}{params} on {what} on {trainer.device}", file=sys.stderr)
    trainer.fit()
    return trainer.world.main

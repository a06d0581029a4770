"""Tiny runs of every family, trained in seconds: what the server tests serve (one per family)."""
from __future__ import annotations

from pathlib import Path

import torch

import dlforge

QUIET = {"progress": False}


def tiny_runs(root: Path) -> dict[str, Path]:
    """-> {name: run directory}: a cnn classifier on digits, a char gpt, a translator on numbers (en) and a
    text-to-image unet, each trained for a few dozen steps (quality is not the point; behaviour is)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dlforge.train("cnn-small", data="digits", out=root / "digits", img_size=16, max_steps=40, batch_size=64,
                      lr=3e-3, **QUIET)
        text = "the cat sat on the mat.\nthe dog ran to the park.\n" * 40
        dlforge.train("gpt-tiny", data=text, out=root / "gpt", block_size=32, batch_size=16, max_steps=40, lr=3e-3,
                      eval_every=40, **QUIET)
        dlforge.train("transformer-tiny", data="numbers", out=root / "numbers", langs="en", tokenizer="char",
                      train_pairs=400, val_numbers=20, test_numbers=20, width=32, heads=2, layers=1, batch_size=32,
                      max_steps=150, eval_every=150, lr=1e-2, **QUIET)
        dlforge.train("unet-tiny", data="digits", out=root / "unet", img_size=8, timesteps=50, batch_size=32,
                      max_steps=20, eval_every=20, lr=3e-3, **QUIET)
    finally:
        torch.set_num_threads(n)
    return {p.name: p for p in (root / "digits", root / "gpt", root / "numbers", root / "unet")}

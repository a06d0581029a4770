"""The Python API: dlforge.train(model, data=..., **options) and dlforge.load(path).

    import dlforge
    run = dlforge.train("cnn-small", data="digits", epochs=2, img_size=16)   # a dataset name, a file, or
    run.report["accuracy"]                                                  # data in memory: (images, labels)
    clf = dlforge.load(run.path)                                            # the model, loaded once
    clf.predict("shoe.png", top_k=3)

Options are the command line's, without dashes (`--block-size 64` is block_size=64). Errors are
DlforgeError with the same one-line messages the command line prints.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dlforge.errors import DlforgeError
from dlforge.recipes.base import Handle, recipe_for
from dlforge.recipes.base import train as _train
from dlforge.runs import Run
from dlforge.train.callbacks import Callback


def train(model: str, data: Any = None, *, out: str | Path | None = None, resume: bool = False,
          callbacks: list[Callback] | tuple = (), **options) -> Handle:
    """Train a registered model (`dlforge models`) and evaluate it; -> its handle, with `.report`.

    data, by family:
      classify        "digits" | "mnist" | "fashion-mnist" | "gtsrb" | "folder" (with data_dir=...), or in memory
                      (images, labels) / {"images", "labels", "test_images", "test_labels", "classes"}:
                      arrays or tensors (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 or floats in [0, 1];
      language-model  "tinyshakespeare", a text file, or text in memory (a string, or a list of strings);
      seq2seq         "numbers", a TSV file (source<TAB>target), or a list of (source, target) pairs;
      denoise         "fashion-mnist" | "mnist" | "digits", a captions CSV, or a list of (image, caption);
      speech          "spoken-numbers" (eSpeak NG), or a manifest CSV of audio_path,transcript.
    Data in memory is written into the run directory, so that the run rebuilds from its own files.
    out: the run directory (default runs/MODEL-DATA, numbered); resume: continue it from its last checkpoint.
    callbacks: train.callbacks.Callback objects (events that receive the trainer)."""
    with caller_rng_kept():
        return _train(model, data, out=out, resume=resume, callbacks=callbacks, **options)


def caller_rng_kept():
    """torch's global random state (CPU and every CUDA device) as it was before: training seeds it with --seed,
    and building a model draws its initial weights from it, so the caller's own torch.manual_seed(123) was
    silently replaced by dlforge's."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


def load(path: str | Path, device: str = "auto", which: str = "best", ema: bool = True) -> Handle:
    """A run directory -> its family's handle (Classifier, LanguageModel, Translator, Diffuser or Transcriber) with the
    model of checkpoint `which` ("best", else "last") loaded once, on `device`: its moving average of the weights
    where the run keeps one (classifiers, language models, diffusion; ema=False: the raw weights)."""
    for name, value, want in (("path", path, (str, os.PathLike)), ("device", device, str), ("ema", ema, bool)):
        if not isinstance(value, want):  # was a TypeError from deep inside (Path(None), torch.device(None))
            raise DlforgeError(f"{name}: expected {'a run directory (str or Path)' if name == 'path' else want.__name__}"
                               f", got {value!r}")
    run = Run.open(path)
    with caller_rng_kept():  # the model is built (its random initial weights drawn) before the checkpoint loads
        return recipe_for(run.config.task).handle(run, device=device, which=which, ema=ema)

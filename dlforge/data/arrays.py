"""Images and labels given in memory (dlforge.train(model, data=(images, labels))): checked, laid out as
uint8 (N, C, H, W), and kept in the run directory as one safetensors file, so that evaluation and resume
rebuild the run from its own files like any other dataset."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dlforge.errors import DlforgeError

FILE = "data.safetensors"


def as_uint8_images(x, what: str = "images") -> torch.Tensor:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}, or 4 (RGBA, whose alpha is dropped as PIL's
    convert("RGB") drops a file's); uint8, or floats in [0, 1] -> uint8 (N, C, H, W)."""
    if not isinstance(x, torch.Tensor):
        a = np.asarray(x)
        if a.dtype.kind not in "buif":  # was torch's TypeError (None, strings, objects) or NotImplementedError (complex)
            raise DlforgeError(f"{what}: expected numbers (uint8, or floats in [0, 1]), got "
                               f"{'None' if x is None else f'an array of {a.dtype}'}")
        t = torch.as_tensor(np.ascontiguousarray(a))
    else:
        t = x.detach().cpu()
        if t.is_complex():
            raise DlforgeError(f"{what}: expected numbers (uint8, or floats in [0, 1]), got a tensor of {t.dtype}")
    if t.dim() == 3:
        t = t[:, None]
    if t.dim() != 4:
        raise DlforgeError(f"{what}: expected an array of shape (N, H, W), (N, H, W, C) or (N, C, H, W); got {tuple(t.shape)}")
    if t.shape[1] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] not in (1, 3, 4):
        raise DlforgeError(f"{what}: expected 1, 3 or 4 channels, got shape {tuple(t.shape)}")
    t = t[:, :3]  # RGBA: its RGB
    if t.is_floating_point():
        if t.isnan().any():
            raise DlforgeError(f"{what}: float images hold NaN; expected values in [0, 1]")
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise DlforgeError(f"{what}: float images must lie in [0, 1] (or pass uint8 0..255)")
        t = (t * 255).round()
    elif t.dtype != torch.uint8 and t.numel() and (t.min() < 0 or t.max() > 255):
        raise DlforgeError(f"{what}: integer images must lie in 0..255")
    return t.to(torch.uint8).contiguous()


def as_labels(y, n: int, what: str = "labels") -> torch.Tensor:
    if y is None:  # (images, None), or test_images without test_labels: was torch's TypeError
        raise DlforgeError(f"{what}: missing; give {n} integer class indices (or class names)")
    t = torch.as_tensor(np.ascontiguousarray(y))
    if t.dim() != 1 or len(t) != n or t.is_floating_point() or t.is_complex():
        raise DlforgeError(f"{what}: expected {n} integer class indices, got shape {tuple(t.shape)} of {t.dtype}")
    if n and t.min() < 0:
        raise DlforgeError(f"{what}: class indices must be 0 or more")
    return t.long()


def named_labels(d: dict) -> None:
    """Labels given as names ("cat", "dog"), as scikit-learn takes them: d's labels (and test_labels) become
    indices into d's classes, the names in sorted order unless `classes` orders them. Before, a torch TypeError."""
    given = {k: np.asarray(d[k]) for k in ("labels", "test_labels") if d.get(k) is not None}
    if not any(a.dtype.kind in "USO" for a in given.values()):
        return
    names = [str(c) for c in d["classes"]] if d.get("classes") else sorted({str(v) for a in given.values()
                                                                          for v in a.ravel()})
    index = {n: i for i, n in enumerate(names)}
    for k, a in given.items():
        unknown = sorted({str(v) for v in a.ravel()} - set(index))
        if unknown:
            raise DlforgeError(f"{k}: {', '.join(map(repr, unknown[:3]))} not among the classes "
                               f"({', '.join(map(repr, names[:10]))})")
        d[k] = np.array([index[str(v)] for v in a.ravel()], dtype=np.int64).reshape(a.shape)
    d["classes"] = names


def write(path: Path, data, classes: list[str] | None = None) -> Path:
    """data: (images, labels), or a dict with images, labels and optionally test_images, test_labels, classes.
    Without a test set, a fixed stratified 20% of the images is held out for testing."""
    if isinstance(data, dict):
        d = dict(data)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        d = {"images": data[0], "labels": data[1]}
    else:
        raise DlforgeError("data: expected (images, labels) or a dict with 'images' and 'labels'")
    unknown = set(d) - {"images", "labels", "test_images", "test_labels", "classes"}
    if unknown or "images" not in d or "labels" not in d:
        raise DlforgeError(f"data: expected keys images, labels (and test_images, test_labels, classes); got {sorted(d)}")
    x = as_uint8_images(d["images"])
    if len(x) < 2:
        raise DlforgeError(f"images: expected two images or more, got {len(x)}")
    named_labels(d)
    y = as_labels(d["labels"], len(x))
    if "test_images" in d:
        tx = as_uint8_images(d["test_images"], "test_images")
        ty = as_labels(d.get("test_labels"), len(tx), "test_labels")
    else:
        from sklearn.model_selection import train_test_split
        idx = np.arange(len(x))
        counts = np.bincount(y.numpy())
        strat = y.numpy() if counts.min(initial=0) >= 2 and round(0.2 * len(y)) >= len(counts) else None
        tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=strat)
        x, y, tx, ty = x[tr], y[tr], x[te], y[te]
    k = int(max(y.max(), ty.max())) + 1 if len(y) else 0
    classes = [str(c) for c in (d.get("classes") or classes or range(k))]
    if len(classes) < k:
        raise DlforgeError(f"data: labels go up to {k - 1}, but {len(classes)} classes are named")
    if len(present := y.unique()) < 2:  # trained to 100% on one class, and reported it, without a word
        raise DlforgeError(f"labels: every training image is of class {classes[int(present[0])]!r}; a classifier "
                           f"needs images of two classes or more")
    if tx.shape[1:] != x.shape[1:]:
        raise DlforgeError(f"test_images: shape {tuple(tx.shape[1:])} differs from images' {tuple(x.shape[1:])}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"train_x": x, "train_y": y, "test_x": tx, "test_y": ty}, str(path),
              metadata={"classes": json.dumps(classes)})
    return path


def read(path: str | Path):
    """-> (train_x, train_y, test_x, test_y, classes) from a file made by write()."""
    from safetensors import safe_open
    try:
        t = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            classes = json.loads(f.metadata()["classes"])
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise DlforgeError(f"{path}: not a dlforge in-memory dataset ({e})") from None
    return t["train_x"], t["train_y"], t["test_x"], t["test_y"], classes

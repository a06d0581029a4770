"""Datasets for the scratch engine as flat NumPy arrays.

Images (digits | mnist | fashion-mnist) come from dlforge.data.images as uint8 (N, C, H, W);
here they are flattened to (N, C*H*W), scaled to [0, 1] by x / 255 and standardised with the
training set's mean and std: x' = (x - mean) / std (one scalar each, as Normalize does).
moons is sklearn's make_moons(1000, noise=0.1) with a seeded 80/20 split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlforge.errors import DlforgeError

DATASETS = ("digits", "mnist", "fashion-mnist", "moons")


@dataclass
class Arrays:
    train_x: np.ndarray      # (N_train, D) standardised features
    train_y: np.ndarray      # (N_train,) int64 class indices
    test_x: np.ndarray       # (N_test, D)
    test_y: np.ndarray       # (N_test,)
    classes: list[str]

    @property
    def num_features(self) -> int:
        return self.train_x.shape[1]


def _standardise(train: np.ndarray, test: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(), train.std()
    std = std if std > 0 else 1.0
    return ((train - mean) / std).astype(dtype), ((test - mean) / std).astype(dtype)


def _moons(seed: int, dtype: str) -> Arrays:
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split

    x, y = make_moons(n_samples=1000, noise=0.1, random_state=seed)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed)
    mean, std = xtr.mean(axis=0), xtr.std(axis=0)                   # per feature, (2,)
    xtr, xte = ((xtr - mean) / std).astype(dtype), ((xte - mean) / std).astype(dtype)
    return Arrays(xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), ["0", "1"])


def load_arrays(name: str, data_dir: str | None = None, seed: int = 0,
                dtype: str = "float32") -> Arrays:
    """Train/test arrays for `name`: digits | mnist | fashion-mnist | moons."""
    if name not in DATASETS:
        raise DlforgeError(f"--data: expected one of {', '.join(DATASETS)}; got {name!r}")
    if data_dir and name in ("digits", "moons"):  # made in memory: the folder was silently ignored
        raise DlforgeError(f"--data-dir: {name} is made in memory (scikit-learn); it takes no --data-dir")
    if name == "moons":
        return _moons(seed, dtype)
    from dlforge.data.images import load_dataset

    ds = load_dataset(name, data_dir=data_dir)
    xtr = ds.train_x.numpy().reshape(len(ds.train_x), -1).astype(np.float64) / 255.0
    xte = ds.test_x.numpy().reshape(len(ds.test_x), -1).astype(np.float64) / 255.0
    xtr, xte = _standardise(xtr, xte, dtype)
    return Arrays(xtr, ds.train_y.numpy().astype(np.int64), xte,
                  ds.test_y.numpy().astype(np.int64), list(ds.classes))


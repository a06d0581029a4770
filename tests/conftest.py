"""Shared fixtures: tiny, seeded data; the real MNIST test set from ../shared when present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
MNIST_DIR = SHARED / "data" / "mnist"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's cache."""
    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.manual_seed(0)


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the real MNIST test set is not at {MNIST_DIR} (../shared is absent)")
    return MNIST_DIR


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    import gzip
    import struct
    head = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = head + array.astype(np.uint8).tobytes()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def tiny_idx_dir(tmp_path) -> Path:
    """A 4-file IDX dataset in the MNIST layout: 120 train, 40 test images of 12×12, 10 classes."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = np.arange(n) % 10
        imgs = (rng.random((n, 12, 12)) * 40).astype(np.uint8)
        for i, lab in enumerate(labels):  # class k lights up row k: learnable
            imgs[i, lab, :] = 255
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", imgs)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


@pytest.fixture
def one_thread():
    """Tiny models are many small kernels: with 2 threads on a busy 2-core machine, OpenMP's waiting
    threads make them up to 100x slower (measured: lstm-small 20 steps 0.19 s vs 33 s). One thread here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""Image files decoded once into a uint8 cache on disk, then read a batch at a time.

A folder of images (or a captions CSV, or GTSRB's PPMs) is decoded at the training size into
$DLFORGE_CACHE/images/<key>.u8 — rows of (C, S, S) uint8, one per file, in the files' order — keyed by
every file's path, size and modification time, the size, the colour mode and the crop boxes. A later run
with the same files opens the cache and decodes nothing; a changed, added or removed file is a new key.
Files that cannot be decoded are recorded (with the reason) in the key's .json beside it, so a later run
reports (or skips) them exactly as the first did.

Why a cache and not DataLoader workers decoding every epoch (benchmarks/data_scale.py --images measures
both): on this 2-core machine decode workers take the cores the training step needs — their decoding
competes with the model for every epoch — while the cache is decoded once (in parallel, by a process
pool) and then costs one pread per run of rows: an epoch read from it runs at the in-memory path's speed.
A memory map is not used for reading because its touched pages count as the process's resident memory
(RSS then grows to the whole cache over an epoch); pread goes through the page cache, which the kernel
can reclaim. Augmentation is unchanged: the batch loader seeds it per (seed, epoch, batch), whatever
holds the images, so exact resume holds.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dlforge.data.download import cache_dir
from dlforge.errors import DlforgeError

FORMAT = 2  # 2: images turned upright by their EXIF orientation (images.as_mode)
PARALLEL_FROM = 2000   # files: below this the pool's start-up costs more than it saves
CHUNK = 256            # files a worker decodes per task
STATS_ROWS = 4096      # rows read at a time to compute the channel statistics


class ImageArray:
    """uint8 images (N, C, S, S) held in a cache file: the part of a tensor's interface the loaders use.

    len(a), a.shape, a[i] / a[i:j] / a[index tensor] -> a uint8 tensor read from the file (only those rows);
    a.take(index) -> a lazy subset (a validation split, say), a.gray() -> the same images converted to one
    channel as they are read."""

    def __init__(self, path: Path, shape: tuple[int, int, int], rows: np.ndarray, gray_on_read: bool = False):
        self.path, self.row_shape, self.rows, self.gray_on_read = Path(path), tuple(shape), rows.astype(np.int64), gray_on_read
        self.row_bytes = int(np.prod(shape))
        self._fd: int | None = None
        self._pid = -1

    # -- the tensor interface
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        c, h, w = self.row_shape
        return torch.Size((len(self.rows), 1 if self.gray_on_read else c, h, w))

    dtype = torch.uint8

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):  # rows first (read), then the rest on the tensor: x[:, 0], x[i, :, 2:]
            rows = self[index[0]]
            return rows[index[1:]] if isinstance(index[0], (int, np.integer)) else rows[(slice(None),) + index[1:]]
        if isinstance(index, (int, np.integer)):
            return self[[int(index)]][0]
        if isinstance(index, slice):
            picked = self.rows[index]
        else:
            index = index.numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
            if index.dtype == bool:
                raise TypeError("ImageArray: index with row numbers, not a mask")
            picked = self.rows[index.astype(np.int64)]
        return self._read(picked)

    def take(self, index) -> "ImageArray":
        index = index.numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        return ImageArray(self.path, self.row_shape, self.rows[index.astype(np.int64)], self.gray_on_read)

    def gray(self) -> "ImageArray":
        if self.row_shape[0] == 1:
            return self
        return ImageArray(self.path, self.row_shape, self.rows, True)

    def numpy(self) -> np.ndarray:
        return self[:].numpy()

    def __repr__(self) -> str:
        return f"ImageArray({self.path.name}, shape={tuple(self.shape)})"

    def __getstate__(self) -> dict:  # the file descriptor is per process
        return {**self.__dict__, "_fd": None, "_pid": -1}

    # -- reading
    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            except OSError as e:
                raise DlforgeError(f"{self.path}: cannot open the image cache ({e.strerror}); delete it to decode "
                                   f"the images again") from None
        return self._fd

    def _read(self, picked: np.ndarray) -> torch.Tensor:
        """Rows `picked` of the file, in that order: one pread per run of consecutive rows."""
        n, rb = len(picked), self.row_bytes
        out = np.empty((n, rb), np.uint8)
        if n:
            fd = self._file()
            order = np.argsort(picked, kind="stable")
            s = picked[order]
            breaks = np.flatnonzero(np.diff(s) != 1) + 1
            for run in np.split(np.arange(n), breaks):
                first = int(s[run[0]])
                buf = os.pread(fd, rb * len(run), first * rb)
                if len(buf) != rb * len(run):
                    raise DlforgeError(f"{self.path}: the image cache is truncated; delete it to decode the images again")
                out[order[run]] = np.frombuffer(buf, np.uint8).reshape(len(run), rb)
        x = torch.from_numpy(out).view(n, *self.row_shape)
        return to_gray(x) if self.gray_on_read else x


def to_gray(x: torch.Tensor | ImageArray) -> torch.Tensor | ImageArray:
    """uint8 RGB (N, 3, H, W) -> (N, 1, H, W) by ITU-R 601 luma (the reference's Grayscale), rounded; an
    ImageArray converts as it is read."""
    if isinstance(x, ImageArray):
        return x.gray()
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def take(x: torch.Tensor | ImageArray, index: torch.Tensor) -> torch.Tensor | ImageArray:
    """x[index] for a tensor; a lazy subset of an ImageArray (nothing is read)."""
    return x.take(index) if isinstance(x, ImageArray) else x[index]


def channel_stats(x: ImageArray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (sample) standard deviation of images in [0, 1], read STATS_ROWS at a time."""
    c = x.shape[1]
    total, sq, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), STATS_ROWS):
        a = x[i:i + STATS_ROWS].numpy().astype(np.float64) / 255
        total += a.sum(axis=(0, 2, 3))
        sq += np.square(a).sum(axis=(0, 2, 3))
        n += a.shape[0] * a.shape[2] * a.shape[3]
    mean = total / n
    var = np.maximum(sq - n * mean ** 2, 0) / max(1, n - 1)
    return tuple(mean.tolist()), tuple(np.maximum(np.sqrt(var), 1e-3).tolist())


# ---------------------------------------------------------------- building the cache
def cache_key(paths: Sequence[Path], size: int, mode: str, boxes: Sequence[tuple] | None) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([FORMAT, size, mode]).encode())
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"  # decoding reports it
        h.update(f"\0{os.path.abspath(p)}\0{stamp}\0{boxes[i] if boxes else ''}".encode())
    return h.hexdigest()


def _decode_chunk(args: tuple) -> tuple[int, bytes, list[tuple[int, str]]]:
    """Worker: files[start:start+k] -> their rows (zeros where a file fails) and the failures."""
    decode, start, paths, boxes, size, mode, row_bytes = args
    out = np.zeros((len(paths), row_bytes), np.uint8)
    bad = []
    for j, p in enumerate(paths):
        try:
            out[j] = decode(p, size, mode, boxes[j] if boxes else None).reshape(-1)
        except DlforgeError as e:
            bad.append((start + j, str(e)))
    return start, out.tobytes(), bad


def decode_files(paths: Sequence[Path], size: int, mode: str, decode: Callable, boxes: Sequence[tuple] | None = None,
                 workers: int | None = None) -> tuple[ImageArray, list[tuple[int, str]]]:
    """Every file decoded (by `decode(path, size, mode, box)` -> uint8 (C, size, size)) into the cache, or
    found there -> (an ImageArray of all len(paths) rows, [(row, reason) of each file that failed])."""
    c = 1 if mode == "L" else 3
    shape, row_bytes = (c, size, size), c * size * size
    folder = cache_dir() / "images"
    key = cache_key(paths, size, mode, boxes)
    data, meta = folder / f"{key}.u8", folder / f"{key}.json"
    try:
        info = json.loads(meta.read_text())
        if info["format"] == FORMAT and info["n"] == len(paths) and data.stat().st_size == len(paths) * row_bytes:
            return ImageArray(data, shape, np.arange(len(paths))), [tuple(b) for b in info["bad"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet (or a broken entry): decode again
    tmp = folder / f"{key}.u8.{os.getpid()}.tmp"
    bad: list[tuple[int, str]] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, len(paths) * row_bytes)
            tasks = [(decode, s, list(paths[s:s + CHUNK]), list(boxes[s:s + CHUNK]) if boxes else None, size, mode,
                      row_bytes) for s in range(0, len(paths), CHUNK)]
            workers = workers or min(8, os.cpu_count() or 1)
            if len(paths) < PARALLEL_FROM or workers < 2:
                results = map(_decode_chunk, tasks)
                pool = None
            else:  # fork: the workers need only PIL and numpy, and start at once
                pool = ProcessPoolExecutor(workers, mp_context=get_context("fork"))
                results = pool.map(_decode_chunk, tasks)
            try:
                for start, rows, failed in results:
                    os.pwrite(fd, rows, start * row_bytes)
                    bad += failed
            finally:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, data)
        meta_tmp = meta.with_suffix(f".{os.getpid()}.tmp")
        meta_tmp.write_text(json.dumps({"format": FORMAT, "n": len(paths), "shape": shape, "bad": bad,
                                        "first": str(paths[0]) if paths else ""}))
        os.replace(meta_tmp, meta)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DlforgeError(f"{folder}: cannot write the image cache ({e.strerror}); free some space or set "
                           f"DLFORGE_CACHE to another folder") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ImageArray(data, shape, np.arange(len(paths))), bad

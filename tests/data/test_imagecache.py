"""The decoded-image cache: image files decoded once (in parallel for many), read back a batch at a time
exactly as the in-memory path would hold them; reused while the files are unchanged, rebuilt when one
changes; failures recorded so that a later run reports or skips them the same way."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.data import imagecache, images
from dlforge.data.images import load_dataset
from dlforge.errors import DlforgeError


def _folder(root, n=6, classes=("a", "b"), size=(11, 9)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _files(root):
    return sorted(root.rglob("*.png"))


def _decoded(paths, size, mode="RGB"):
    return torch.from_numpy(np.stack([images.decode_image(p, size, mode) for p in paths]))


def test_rows_read_back_as_decoded_whatever_the_index(tmp_path):
    paths = _files(_folder(tmp_path))
    arr, bad = imagecache.decode_files(paths, 8, "RGB", images.decode_image)
    want = _decoded(paths, 8)
    assert bad == [] and arr.shape == want.shape and arr.dtype == torch.uint8
    assert torch.equal(arr[:], want) and torch.equal(arr[3], want[3]) and torch.equal(arr[2:7], want[2:7])
    idx = torch.tensor([9, 0, 4, 5, 6, 11, 1])  # unordered, with runs of consecutive rows
    assert torch.equal(arr[idx], want[idx]) and torch.equal(arr[idx, 1], want[idx, 1])
    sub = arr.take(torch.tensor([5, 2, 8]))
    assert len(sub) == 3 and torch.equal(sub[torch.tensor([2, 0])], want[[8, 5]])
    assert torch.equal(arr.gray()[:], imagecache.to_gray(want))
    assert imagecache.to_gray(arr).shape == (12, 1, 8, 8)


def test_channel_statistics_match_the_in_memory_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(imagecache, "STATS_ROWS", 5)  # several chunks
    paths = _files(_folder(tmp_path))
    arr, _ = imagecache.decode_files(paths, 8, "RGB", images.decode_image)
    x = _decoded(paths, 8).float() / 255
    mean, std = imagecache.channel_stats(arr)
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-6)
    assert np.allclose(std, x.std(dim=(0, 2, 3)).tolist(), atol=1e-6)


def test_a_folder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    first = load_dataset("folder", data_dir=str(root), img_size=8)
    assert isinstance(first.train_x, imagecache.ImageArray)

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(images, "decode_image", no_decoding)
    again = load_dataset("folder", data_dir=str(root), img_size=8)
    assert torch.equal(again.train_x[:], first.train_x[:]) and torch.equal(again.test_y, first.test_y)
    assert again.mean == first.mean
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another cache entry
        load_dataset("folder", data_dir=str(root), img_size=6)


def test_a_changed_file_is_decoded_again(tmp_path):
    paths = _files(_folder(tmp_path))
    arr, _ = imagecache.decode_files(paths, 8, "RGB", images.decode_image)
    Image.fromarray(np.full((30, 30, 3), 7, np.uint8)).save(paths[4])  # another size and content
    arr2, _ = imagecache.decode_files(paths, 8, "RGB", images.decode_image)
    assert arr2.path != arr.path and int(arr2[4].max()) == 7 and torch.equal(arr2[5], arr[5])


def test_bad_files_are_reported_the_same_from_the_cache(tmp_path, capsys):
    root = _folder(tmp_path / "imgs")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    errors = []
    for _ in range(2):  # decoded, then from the cache
        with pytest.raises(DlforgeError) as e:
            load_dataset("folder", data_dir=str(root), img_size=8)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "broken.png: cannot decode" in errors[0]
    d = load_dataset("folder", data_dir=str(root), img_size=8, skip_bad=True)
    assert "skipped 1 unreadable image" in capsys.readouterr().err
    assert len(d.train_y) + len(d.test_y) == 12 and len(d.train_x) == len(d.train_y)


def test_the_process_pool_decodes_what_one_process_does(tmp_path, monkeypatch):
    paths = _files(_folder(tmp_path, n=40))
    monkeypatch.setattr(imagecache, "CHUNK", 7)
    serial, _ = imagecache.decode_files(paths, 8, "L", images.decode_image, workers=1)
    serial.path.with_suffix(".json").unlink()  # force a second build
    monkeypatch.setattr(imagecache, "PARALLEL_FROM", 1)
    pooled, _ = imagecache.decode_files(paths, 8, "L", images.decode_image, workers=2)
    assert torch.equal(pooled[:], _decoded(paths, 8, "L")) and torch.equal(pooled[:], serial[:])


def test_an_interrupted_build_leaves_no_cache_entry(tmp_path, monkeypatch):
    paths = _files(_folder(tmp_path))
    calls = []

    def dies_on_the_fifth(p, size, mode, box=None):
        calls.append(p)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return images.decode_image(p, size, mode, box)
    with pytest.raises(KeyboardInterrupt):
        imagecache.decode_files(paths, 8, "RGB", dies_on_the_fifth)
    folder = imagecache.cache_dir() / "images"
    key = imagecache.cache_key(paths, 8, "RGB", None)
    assert not (folder / f"{key}.u8").exists() and not list(folder.glob("*.tmp"))
    arr, bad = imagecache.decode_files(paths, 8, "RGB", images.decode_image)
    assert bad == [] and torch.equal(arr[:], _decoded(paths, 8))


def test_a_truncated_cache_is_a_clear_error(tmp_path):
    paths = _files(_folder(tmp_path))
    arr, _ = imagecache.decode_files(paths, 8, "RGB", images.decode_image)
    with open(arr.path, "r+b") as f:
        f.truncate(arr.row_bytes * 3)
    fresh = imagecache.ImageArray(arr.path, arr.row_shape, arr.rows)
    with pytest.raises(DlforgeError, match="image cache is truncated; delete it"):
        fresh[10]
    again, _ = imagecache.decode_files(paths, 8, "RGB", images.decode_image)  # its size no longer matches: rebuilt
    assert torch.equal(again[10], _decoded(paths, 8)[10])

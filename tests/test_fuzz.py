"""Hostile inputs: every reader either returns a valid result or raises DlforgeError — never another
exception, a hang, a huge allocation or a write outside its target (hypothesis, derandomised)."""
import gzip
import io
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from dlforge.data.download import safe_extract
from dlforge.data.images import MAX_PIXELS, decode_image, read_idx
from dlforge.errors import DlforgeError
from dlforge.train.checkpoint import load_checkpoint, load_weights

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _idx_like(data: bytes, ndim: int, gz: bool) -> bytes:
    head = b"\x00\x00\x08" + bytes([ndim])
    raw = head + data
    return gzip.compress(raw) if gz else raw


@FUZZ
@given(st.binary(max_size=400), st.integers(0, 6), st.booleans())
def test_idx_reader(tmp_path, body, ndim, gz):
    p = tmp_path / "f.idx"
    p.write_bytes(_idx_like(body, ndim, gz))
    try:
        a = read_idx(p)
    except DlforgeError:
        return
    assert a.dtype == np.uint8 and a.ndim == ndim


def _valid(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _valid(fmt) for fmt in ("PNG", "JPEG", "PPM")}


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.integers(0, 200), st.binary(max_size=64), st.integers(0, 300))
def test_image_decoder_truncated_or_corrupted(tmp_path, fmt, cut, noise, where):
    good = VALID[fmt]
    data = good[: max(0, len(good) - cut)]
    where = min(where, len(data))
    data = data[:where] + noise + data[where + len(noise):]
    p = tmp_path / f"x.{fmt.lower()}"
    p.write_bytes(data)
    try:
        a = decode_image(p, 8, "L")
    except DlforgeError as e:
        assert str(p) in str(e)
        return
    assert a.shape == (1, 8, 8)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    """A 20,000×20,000 PNG of zeros is ~400 KB on disk and 400 MB decoded."""
    side = 20_000
    assert side * side > MAX_PIXELS
    p = tmp_path / "bomb.png"
    row = b"\x00" + b"\x00" * side  # filter byte + pixels
    raw = zlib_rows(row, side)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", raw) + _chunk(b"IEND", b""))
    assert p.stat().st_size < 2_000_000
    with pytest.raises(DlforgeError, match="refused"):
        decode_image(p, 8, "L")


def zlib_rows(row: bytes, n: int) -> bytes:
    import zlib
    c = zlib.compressobj(9)
    return b"".join(c.compress(row) for _ in range(n)) + c.flush()


def _chunk(kind: bytes, data: bytes) -> bytes:
    import zlib
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@FUZZ
@given(st.binary(max_size=300))
def test_checkpoint_loader_on_garbage(tmp_path, data):
    p = tmp_path / "c.safetensors"
    p.write_bytes(data)
    with pytest.raises(DlforgeError):
        load_checkpoint(p)


@FUZZ
@given(st.integers(0, 2 ** 20), st.text(max_size=80), st.binary(max_size=40))
def test_safetensors_header_fuzz(tmp_path, n, header, tail):
    p = tmp_path / "c.safetensors"
    p.write_bytes(struct.pack("<Q", n) + header.encode() + tail)
    with pytest.raises(DlforgeError):
        load_checkpoint(p)
    try:
        load_weights(p)
    except DlforgeError:
        pass


NAMES = st.lists(st.sampled_from(["a", "b", "..", ".", "/", "etc", "x.txt", "\\", "c:"]), min_size=1, max_size=6)


@FUZZ
@given(st.lists(NAMES.map("/".join), min_size=1, max_size=4))
def test_archive_members_never_land_outside(tmp_path_factory, names):
    tmp = tmp_path_factory.mktemp("zip")
    z = tmp / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        for i, n in enumerate(names):
            f.writestr(n or "empty", f"{i}")
    before = {p for p in tmp.rglob("*")}
    try:
        safe_extract(z, tmp / "out")
    except DlforgeError:
        pass
    outside = {p for p in tmp.rglob("*")} - before
    assert all((tmp / "out") in p.parents or p == tmp / "out" for p in outside)


def test_archive_symlink_refused(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        f.writestr(info, "/etc/passwd")
    with pytest.raises(DlforgeError, match="unsafe member"):
        safe_extract(z, tmp_path / "out")

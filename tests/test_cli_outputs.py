"""Every command that writes a file, pointed at a path it cannot write: exit code 2 and one stderr line that
names the file, never a traceback. And every command that opens an image refuses a decompression bomb."""
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlforge.cli import main
from tests.conftest import format1_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def runs(tmp_path) -> Path:
    """Copies of the fixture runs (commands write into them) and an image to noise."""
    for family in ("classify", "denoise", "seq2seq"):
        format1_run(family, tmp_path / family)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "grey.png")
    return tmp_path


# Tests run as root, where chmod 0o500 stops no write. What fails for root too: a path whose parent is a
# regular file (mkdir: File exists / open: Not a directory), and a target that is a directory (rename and
# open fail: Is a directory). Each case: argv, the file the error must name, what to break first.
BLOCKED = "file.txt/x.png"
CASES = {
    "plot activations --out": (["plot", "activations", "--out", BLOCKED], BLOCKED, None),
    "noise --out": (["noise", "grey.png", "--size", "8", "--frames", "2", "--out", BLOCKED], BLOCKED, None),
    "sample --out": (["sample", "denoise", "--prompt", "zero", "--n", "1", "--steps", "1", "--out", BLOCKED],
                     BLOCKED, None),
    "sample --trajectory": (["sample", "denoise", "--prompt", "zero", "--n", "1", "--steps", "1", "--out", "ok.png",
                             "--trajectory", BLOCKED], BLOCKED, None),
    "translate --attention-map": (["translate", "seq2seq", "12", "--to", "en", "--attention-map", BLOCKED],
                                  BLOCKED, None),
    "train --out": (["train", "mlp", "--data", "digits", "--epochs", "1", "--no-progress", "--out", "file.txt/run"],
                    "file.txt/run", None),
    "eval: report.json": (["eval", "seq2seq", "--limit", "2"], "seq2seq/report-limit2.json",
                          "seq2seq/report-limit2.json"),
    "eval: a figure": (["eval", "classify"], "classify/confusion_matrix.png", "classify/confusion_matrix.png"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_unwritable_output_is_one_line(case, runs, monkeypatch, capsys, reliability):
    argv, named, as_folder = CASES[case]
    monkeypatch.chdir(runs)
    (runs / "file.txt").write_text("a file, not a folder\n")
    if as_folder:
        (runs / as_folder).mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dlforge: error: ") and named in err, err
    assert "Traceback" not in err
    reliability.record("output file that cannot be written (its folder is a file, or it is a folder)",
                       "exit 2, one line naming the file")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width × height 8-bit grey pixels and holds none: what a decompression bomb
    looks like to a header reader (the real 20000×20000 blank image would be 400 MB to decode)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("argv", [
    ["noise", "huge.png", "--out", "n.png"],
    ["train", "mlp", "--data", "folder", "--data-dir", "d", "--epochs", "1", "--no-progress", "--out", "n.png"],
])
def test_a_decompression_bomb_is_refused(argv, tmp_path, monkeypatch, capsys, reliability):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "huge.png").write_bytes(_png_header(20000, 20000))
    for c in "ab":  # a folder dataset whose first image (its colour mode decides the dataset's) is the bomb
        (tmp_path / "d" / c).mkdir(parents=True)
        shutil.copy(tmp_path / "huge.png", tmp_path / "d" / c / "0.png")
    assert main(argv) == 2
    err = capsys.readouterr().err
    named = "huge.png" if argv[0] == "noise" else "d/a/0.png"
    lines = 1 if argv[0] == "noise" else 3  # a folder lists every bad file, one line each, under one error
    assert err.count("\n") == lines and f"{named}: refused, image too large" in err and "Traceback" not in err, err
    assert not (tmp_path / "n.png").exists()
    reliability.record("20000×20000 PNG (decompression bomb) given to noise or as a folder dataset's first image",
                       "exit 2, one error (a folder lists each file), nothing decoded")


# A figure's file: matplotlib raised a ValueError traceback for an unknown suffix, and wrote `grid` as grid.png
# (and an existing folder `outdir` as outdir.png beside it) while the command printed the name it was given
FIGURES = {
    "noise --out": ["noise", "grey.png", "--size", "8", "--frames", "2", "--out", "{}"],
    "plot activations --out": ["plot", "activations", "--out", "{}"],
    "sample --out": ["sample", "denoise", "--prompt", "zero", "--n", "1", "--steps", "1", "--out", "{}"],
    "sample --trajectory": ["sample", "denoise", "--prompt", "zero", "--n", "1", "--steps", "1", "--out", "ok.png",
                            "--trajectory", "{}"],
    "translate --attention-map": ["translate", "seq2seq", "12", "--to", "en", "--attention-map", "{}"],
}


@pytest.mark.parametrize("case", FIGURES)
def test_a_figure_name_without_an_image_suffix_or_a_folder_is_refused_before_any_work(case, runs, monkeypatch,
                                                                                     capsys, reliability):
    monkeypatch.chdir(runs)
    (runs / "outdir").mkdir()
    for name, message in [("grid.txt", "grid.txt: expected an image file name ending in .png, .jpg, "),
                          ("grid", "grid: expected an image file name ending in .png, "),
                          ("outdir", "outdir: is a folder; expected an image file name, e.g. outdir/figure.png")]:
        argv = [a.replace("{}", name) for a in FIGURES[case]]
        assert main(argv) == 2
        out = capsys.readouterr()
        assert out.err.startswith(f"dlforge: error: {message}") and out.err.count("\n") == 1, out.err
        assert not out.out  # refused before it sampled, translated or drew anything
        assert not list(runs.glob("grid*")) and not (runs / "outdir.png").exists() and not (runs / "ok.png").exists()
    argv = [a.replace("{}", "figure.svg") for a in FIGURES[case]]  # another format matplotlib writes is taken
    assert main(argv) == 0 and (runs / "figure.svg").read_bytes().lstrip().startswith((b"<?xml", b"<svg"))
    reliability.record("a figure named without an image suffix (`--out grid`, `grid.txt`) or as a folder",
                       "exit 2 before any work, one line naming the file; nothing written", 3)


@pytest.mark.parametrize("argv, says", [
    (["noise", "grey.png", "--size", "8", "--frames", "2", "--out", "grey.png"],
     "--out grey.png: the input image itself; give the strip another file"),
    (["sample", "denoise", "--prompt", "zero", "--n", "1", "--steps", "1", "--out", "g.png", "--trajectory", "g.png"],
     "--trajectory g.png: the same file as --out; give each its own")])
def test_an_output_that_would_overwrite_the_input_or_the_other_output_is_refused(argv, says, runs, monkeypatch,
                                                                                capsys):
    # before: noise replaced the photo with its strip; sample wrote the trajectory over the grid
    monkeypatch.chdir(runs)
    before = (runs / "grey.png").read_bytes()
    assert main(argv) == 2
    assert capsys.readouterr().err == f"dlforge: error: {says}\n"
    assert (runs / "grey.png").read_bytes() == before and not (runs / "g.png").exists()

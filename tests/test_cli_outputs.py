"""Every command that writes a file, pointed at a path it cannot write: exit code 2 and one stderr line that
names the file, never a traceback."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlforge.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runs-v1"  # tiny runs of every family: load in a second


@pytest.fixture
def runs(tmp_path) -> Path:
    """Copies of the fixture runs (commands write into them) and an image to noise."""
    for family in ("classify", "denoise", "seq2seq"):
        shutil.copytree(FIXTURES / family, tmp_path / family)
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
    "eval: report.json": (["eval", "seq2seq", "--limit", "2"], "seq2seq/report.json", "seq2seq/report.json"),
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

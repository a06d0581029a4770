"""examples/: each script runs as a user would run it (a fresh process, an output folder of its own) and
prints real figures."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # each takes ~5 s on one free CPU thread; generous for a busy 2-core machine


def run_example(name: str, tmp_path: Path) -> str:
    """python examples/NAME OUT in the repository root -> its stdout (exit code 0, else the test fails)."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DLFORGE_CACHE": str(tmp_path / "cache")}
    try:
        p = subprocess.run([sys.executable, f"examples/{name}", str(out)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{name}: still running after {TIMEOUT_S} s\n{e.stdout}\n{e.stderr}")
    assert p.returncode == 0, f"{name}: exit code {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert (out / "report.json").exists() or any(out.rglob("report.json")), "the run directory is under OUT"
    return p.stdout


def test_classify_digits(tmp_path):
    out = run_example("classify_digits.py", tmp_path)
    acc = float(re.search(r"^test accuracy: ([\d.]+) on (\d+) images$", out, re.M).group(1))
    assert 0 <= acc <= 1
    preds = re.findall(r"^true (\d): predicted (\d) \(p = ([\d.]+)\)$", out, re.M)
    assert len(preds) == 3 and all(0 < float(p) <= 1 for _, _, p in preds)


def test_language_model(tmp_path):
    out = run_example("language_model.py", tmp_path)
    loss = float(re.search(r"^validation loss ([\d.]+), perplexity ([\d.]+)$", out, re.M).group(1))
    assert 0 < loss < 5
    text = ast.literal_eval(re.search(r"^generate: (.*)$", out, re.M).group(1))
    assert text.startswith("the cat") and len(text) > len("the cat")
    streamed = re.search(r"^stream:    (.*)$", out, re.M).group(1)
    assert streamed.startswith("the dog") and len(streamed) > len("the dog")
    probs = [float(p) for p in re.findall(r"^next token '.': p = ([\d.]+)$", out, re.M)]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001


def test_translate_numbers(tmp_path):
    out = run_example("translate_numbers.py", tmp_path)
    m = re.search(r"^test exact match ([\d.]+), character error rate ([\d.]+) on (\d+) held-out pairs$", out, re.M)
    assert 0 <= float(m.group(1)) <= 1 and float(m.group(2)) >= 0 and int(m.group(3)) == 10
    rows = re.findall(r"^(\d+) -> (.+)$", out, re.M)
    assert [s for s, _ in rows] == ["7", "21", "58"] and all(t.strip() for _, t in rows)


def test_text_to_image(tmp_path):
    from PIL import Image
    out = run_example("text_to_image.py", tmp_path)
    assert 0 < float(re.search(r"^best validation loss \(eps MSE\) ([\d.]+) after 40 steps$", out, re.M).group(1))
    path = Path(re.search(r"^wrote (\S+) \(8x8 L, 2 sampled\)$", out, re.M).group(1))
    assert path.is_relative_to(tmp_path) and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (8, 8)


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None,
                    reason="eSpeak NG is not installed (make setup installs it)")
def test_transcribe_numbers(tmp_path):
    out = run_example("transcribe_numbers.py", tmp_path)
    wer, cer, n = re.search(r"^test WER ([\d.]+), CER ([\d.]+) on (\d+) clips", out, re.M).groups()
    assert 0 <= float(cer) <= 1.5 and int(n) == 4
    assert re.search(r"^audio 0 \(1\.0 s\) -> '.*'$", out, re.M)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_an_example_says_its_usage_for_help_and_makes_nothing(name, tmp_path):
    # before: `--help` was taken as OUT_DIR (a folder named --help, a model trained into it), or a traceback
    p = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0 and p.stdout.startswith(f"usage: {name}") and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, run", [("classify_digits.py", "digits-mlp"), ("language_model.py", "gpt"),
                                       ("text_to_image.py", "unet"), ("transcribe_numbers.py", "asr"),
                                       ("translate_numbers.py", "numbers")])
def test_an_example_run_again_into_its_folder_says_so_in_one_line(name, run, tmp_path):
    # before: the second run of `python examples/NAME OUT` was dlforge.train's traceback ("already holds a run")
    (tmp_path / run).mkdir()
    p = subprocess.run([sys.executable, str(ROOT / "examples" / name), str(tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and p.stderr.splitlines()[-1] == (f"{name}: error: {tmp_path / run} already holds this "
                                                               f"example's run: give another OUT_DIR, or none (a new "
                                                               f"temporary folder)")
    assert "Traceback" not in p.stderr and [x.name for x in tmp_path.iterdir()] == [run]

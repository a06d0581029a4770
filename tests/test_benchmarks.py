"""The benchmarks' shared parts (benchmarks/pairs.py): the FLOP count every share of the matmul peak divides by, and
where a result is saved."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.pairs import flop_counter, report, save_options, saved_path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # a benchmark run from another folder


def _count(fn, counter) -> int:
    with counter as fc:
        fn()
    return fc.get_total_flops()


def _qkv(t: int = 16):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 4, t, 8, generator=g, requires_grad=True) for _ in range(3)]


def test_cpu_flash_attention_counts_as_the_same_attention_written_out():
    from torch.utils.flop_counter import FlopCounterMode
    q, k, v = _qkv()
    fused = lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()                       # noqa: E731
    written = lambda: (torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v).sum().backward()  # noqa: E731
    assert _count(fused, FlopCounterMode(display=False)) == 0     # what torch alone counts on a CPU
    # 2 products forward, 4 backward, each 2 · (2·4) · 16 · 16 · 8
    assert _count(fused, flop_counter()) == _count(written, flop_counter()) == 6 * 2 * 8 * 16 * 16 * 8


@pytest.mark.parametrize("t", [16, 128])
def test_causal_attention_counts_the_lower_triangle_with_its_diagonal(t):
    q, k, v = _qkv(t)
    full = _count(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward(), flop_counter())
    causal = _count(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward(), flop_counter())
    assert 0 < causal < full and causal * 2 * t == full * (t + 1)   # the blocks above the diagonal are skipped


def test_a_gpt_step_counts_its_attention_beside_its_matrix_products():
    from dlforge.registry import create_model
    torch.manual_seed(0)
    m = create_model("gpt-tiny", vocab_size=65)
    x = torch.randint(65, (2, 32))
    with flop_counter() as fc:
        F.cross_entropy(m(x)[0].flatten(0, 1), x.flatten()).backward()
    ops = {str(op).removeprefix("aten."): n for op, n in fc.get_flop_counts()["Global"].items()}
    attention = ops["_scaled_dot_product_flash_attention_for_cpu"]
    assert attention > 0 and ops["_scaled_dot_product_flash_attention_for_cpu_backward"] == 2 * attention


def test_the_language_model_throughput_benchmark_reads_its_recipes_as_the_cli_does():
    # `dlforge train` leaves out the options a command does not give: the benchmark read them as attributes
    from benchmarks.language_models import RECIPES, _recipe_kwargs
    assert _recipe_kwargs(RECIPES["gpt"]) == ("gpt-small", {}, 32, 128)
    assert _recipe_kwargs(RECIPES["lstm"]) == ("lstm", {"n_layer": 1, "d_model": 512}, 128, 64)


def test_out_alone_saves_save_alone_writes_the_default_and_neither_writes_nothing(tmp_path):
    ap = argparse.ArgumentParser()
    default, mine = tmp_path / "x.json", tmp_path / "another" / "machine.json"
    save_options(ap, default)
    assert saved_path(ap.parse_args([]), default) is None
    assert saved_path(ap.parse_args(["--save"]), default) == default
    assert saved_path(ap.parse_args(["--out", str(mine)]), default) == mine and mine.parent.is_dir()
    assert saved_path(ap.parse_args(["--save", "--out", str(mine)]), default) == mine


def test_a_benchmark_given_only_out_writes_its_result_there(tmp_path):
    # before, --out without --save ran the benchmark and wrote nothing
    out = tmp_path / "gemm.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.gemm_backends", "--n", "64", "--reps", "1", "--out",
                        str(out)], cwd=ROOT, check=True, capture_output=True, text=True)
    assert json.loads(out.read_text())["n"] == 64
    # the command that reproduces it (it was "python -m benchmarks.gemm_backends", without --n and --reps), in
    # the result printed as one JSON line, the last
    assert json.loads(r.stdout.strip().splitlines()[-1])["command"] == (
        f"python -m benchmarks.gemm_backends --n 64 --reps 1 --out {out}")


def test_a_benchmarks_out_is_a_json_file_and_its_work_folder_is_work(tmp_path, capsys):
    # data_scale's and diffusion_quality's --out was their work folder: given as before, it would have become the
    # name of a results file, so it is refused before any work, naming --work
    ap = argparse.ArgumentParser()
    save_options(ap, tmp_path / "x.json", work="runs/bench")
    assert ap.parse_args([]).work == Path("runs/bench")
    assert ap.parse_args(["--work", str(tmp_path)]).work == tmp_path
    for bad in ("runs/bench-diffusion-v3", str(tmp_path), str(tmp_path / "x.txt")):
        with pytest.raises(SystemExit):
            ap.parse_args(["--out", bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith(f"argument --out: expected the results file, a .json, got {bad!r} (the folder for "
                            "the benchmark's own runs and data is --work)")


def test_a_result_is_printed_and_written_only_where_saved_path_says(tmp_path, capsys):
    result = {"benchmark": "x", "figure": 1.5}
    report(result, None)
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result and not list(tmp_path.iterdir())
    report(result, tmp_path / "x.json", indent=2)
    out = capsys.readouterr()
    assert json.loads(out.out.splitlines()[-1]) == result and out.err.strip() == f"wrote {tmp_path / 'x.json'}"
    assert (tmp_path / "x.json").read_text() == json.dumps(result, indent=2) + "\n"


def test_the_export_benchmark_writes_only_when_saved_and_keeps_the_family_it_did_not_measure(tmp_path):
    # before, every run (a quick try included) rewrote the repository's benchmarks/results/export.json
    committed = ROOT / "benchmarks" / "results" / "export.json"
    before = committed.read_bytes()
    run = [sys.executable, "-m", "benchmarks.export", "--seconds", "0"]
    r = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=ENV)
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout.strip().splitlines()[-1])
    assert printed["torch"] == torch.__version__ and "cnn" not in printed
    assert committed.read_bytes() == before and not list(tmp_path.iterdir())
    mine = tmp_path / "export.json"
    mine.write_text(json.dumps({"cnn": json.loads(before)["cnn"], "torch": "old"}))
    subprocess.run([*run, "--out", str(mine)], cwd=tmp_path, capture_output=True, check=True, timeout=120,
                   env=ENV)
    saved = json.loads(mine.read_text())
    assert saved["cnn"] == json.loads(before)["cnn"] and saved["torch"] == torch.__version__


@pytest.mark.parametrize("argv, message", [
    (["steps", "--steps", "10"], "--steps: expected 11 or more (nanoGPT's first 10 iterations are left out of its step time)"),
    (["quality", "--steps", "0"], "--steps: expected 1 or more")])
def test_gpt_vs_nanogpt_refuses_a_step_count_it_cannot_measure_before_it_trains(argv, message):
    # before: `steps --steps 10` trained nanoGPT and then divided by zero; `quality --steps 0` ran 1,574 steps
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpt_vs_nanogpt", *argv], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == message and not r.stdout

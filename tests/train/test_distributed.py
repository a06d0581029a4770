"""More than one process: `torchrun --nproc_per_node=2 -m dlforge train ...` (gloo on CPU) takes the steps
that one process takes — each rank a slice of every global batch, gradients averaged by DDP — and its
checkpoint resumes on one process. Real processes through torch.distributed.run, beside the one-process run.
(Image batches go through the same trainer code; their slicing, including a last batch with fewer rows than
processes, is checked on its own below. Diffusion draws noise per rank, so there the check is an exact resume
under two processes.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlforge.train import distributed
from tests.train.test_kill_resume import assert_same_tensors, env, log_tail, metrics, write_text

HALF, WHOLE, EVERY = 20, 40, 10
COMMON = ["--eval-every", str(EVERY), "--epochs", "1000", "--no-progress", "--seed", "1", "--lr", "3e-3"]
CASES = {
    # 7 streams split 4 + 3: unequal slices, so each rank's loss must be weighted by its share of the tokens;
    # the carried hidden state is gathered from both ranks into the checkpoint and sliced again on resume
    "lstm": ["--data-file", "{text}", "--layers", "1", "--width", "32", "--dropout", "0", "--batch-size", "7",
             "--block-size", "16", "--eval-tokens", "0"],
    # windows drawn from the global batch's seeds, sliced 3 + 3 over the ranks; a head tied to the embedding.
    # No biases: the keys' bias has no true gradient (softmax ignores a shift shared by all keys), so Adam turns
    # its rounding noise into full-size steps and it wanders differently with any change of summation order
    "gpt-tiny": ["--data-file", "{text}", "--dropout", "0", "--no-bias", "--batch-size", "6", "--block-size", "16",
                 "--eval-tokens", "0"],
}


def launch(nproc: int, args: list[str], out: Path) -> subprocess.Popen:
    log = open(out.with_name(out.name + ".log"), "a")
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 \
        else [sys.executable]
    return subprocess.Popen([*head, "-m", "dlforge", "train", *args, "--out", str(out)], cwd=out.parent, env=env(),
                            stdout=log, stderr=subprocess.STDOUT)


def run_all(procs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    for name, (p, out) in procs.items():
        assert p.wait(timeout=180) == 0, f"{name}\n{log_tail(out)}"


def test_two_processes_take_the_one_process_steps_and_resume_on_one(tmp_path, reliability):
    text = write_text(tmp_path / "lines.txt")
    args = {m: [m, *(a.replace("{text}", str(text)) for a in extra), *COMMON] for m, extra in CASES.items()}
    first = {}
    for m in CASES:
        first[f"{m} whole"] = (launch(1, args[m] + ["--max-steps", str(WHOLE)], tmp_path / f"{m}-1"), tmp_path / f"{m}-1")
        first[f"{m} 2 procs"] = (launch(2, args[m] + ["--max-steps", str(HALF)], tmp_path / f"{m}-2"), tmp_path / f"{m}-2")
    run_all(first)
    for m in CASES:
        two = json.loads((tmp_path / f"{m}-2" / "config.json").read_text())
        assert two["train"]["batch_size"] == json.loads((tmp_path / f"{m}-1" / "config.json").read_text())["train"]["batch_size"]
        out2 = (tmp_path / f"{m}-2.log").read_text()
        assert out2.count("[Step 10]") == 1, f"{m}: only rank 0 prints\n{out2[-2000:]}"
        assert out2.count(f"dlforge: training {m} (") == 1, f"{m}: the banner too\n{out2[-2000:]}"
    run_all({f"{m} resumed on 1": (launch(1, args[m] + ["--max-steps", str(WHOLE), "--resume"], tmp_path / f"{m}-2"),
                                   tmp_path / f"{m}-2") for m in CASES})
    for m in CASES:
        one, two = metrics(tmp_path / f"{m}-1"), metrics(tmp_path / f"{m}-2")
        assert [r["step"] for r in one] == [r["step"] for r in two] and len(one) >= WHOLE // EVERY, m
        for a, b in zip(one, two):  # steps 10, 20 on two processes, 30, 40 resumed on one
            assert a.keys() == b.keys() and a == pytest.approx(b, rel=1e-4, abs=1e-6), (m, a, b)
        wa, wb = (load_file(tmp_path / d / "checkpoints" / "last.safetensors") for d in (f"{m}-1", f"{m}-2"))
        for k in (k for k in wa if k.startswith(("model.", "task."))):  # rounding drift, at the tensor's scale:
            scale = wa[k].abs().max().item()                          # Adam's steps enlarge it where gradients vanish
            assert torch.allclose(wa[k], wb[k], rtol=1e-3, atol=max(1e-5, 1e-3 * scale)), (m, k)
    reliability.record("two processes (`torchrun --nproc_per_node=2`, gloo), then a resume on one process "
                       "(lstm: unequal slices, carried state; gpt-tiny)",
                       "the one-process run's losses and weights, to float rounding (rel. 1e-4)", cases=len(CASES))


def test_diffusion_under_torchrun_resumes_exactly(tmp_path, reliability):
    """Each rank draws its own noise and timesteps (rank 1 from its own generator), so two processes do not take
    one process's steps; what must hold is that a run stopped and resumed on two processes, each rank's
    generator and the moving average restored, takes the uninterrupted run's steps exactly."""
    args = ["unet-tiny", "--data", "digits", "--img-size", "8", "--batch-size", "16", "--timesteps", "100",
            "--eval-every", "4", "--epochs", "1000", "--no-progress", "--seed", "1", "--lr", "3e-3"]
    run_all({"whole": (launch(2, args + ["--max-steps", "16"], tmp_path / "whole"), tmp_path / "whole"),
             "half": (launch(2, args + ["--max-steps", "8"], tmp_path / "half"), tmp_path / "half")})
    halted = load_file(tmp_path / "half" / "checkpoints" / "last.safetensors")
    assert {"rng.torch", "rng.rank1.torch"} <= set(halted)
    run_all({"resumed": (launch(2, args + ["--max-steps", "16", "--resume"], tmp_path / "half"), tmp_path / "half")})
    log = (tmp_path / "half.log").read_text()
    assert log.count("dlforge: resuming ") == 1 and log.count("dlforge: training unet-tiny (") == 2, log[-2000:]  # rank 0
    whole, resumed = metrics(tmp_path / "whole"), metrics(tmp_path / "half")
    assert [r["step"] for r in whole] == [r["step"] for r in resumed] == [4, 8, 12, 16]
    assert whole == resumed and whole[-1]["val_loss"] < whole[0]["val_loss"]   # exact, and it learns
    assert any(k.startswith("task.") for k in halted)                        # the moving average is in it
    assert_same_tensors(*(tmp_path / d / "checkpoints" / "last.safetensors" for d in ("whole", "half")), "diffusion")
    reliability.record("text-to-image diffusion under `torchrun --nproc_per_node=2` (gloo), stopped at step 8 and "
                       "resumed on two processes", "the uninterrupted run's losses and weights, bit for bit", cases=1)


def test_slices_cover_the_global_batch_and_weigh_empty_ranks_zero():
    x, flag = torch.arange(5), torch.tensor(True)
    parts = [distributed.shard((x, flag), distributed.World(3, r)) for r in range(3)]
    assert torch.equal(torch.cat([p[0][0] for p in parts]), x) and all(p[1] for p in parts)
    assert all(p[0][1] is flag for p in parts)  # 0-d tensors (the reset flag) go whole to every rank
    (tail, counts) = distributed.shard((x[:2],), distributed.World(3, 2))
    assert not counts and len(tail[0]) == 1  # a rank past the batch's end runs one row, with weight 0
    assert distributed.shard((x,), distributed.World()) == ((x,), True)


def test_every_rank_draws_its_own_random_numbers_and_gets_them_back():
    def draw(rank: int, tensors=None) -> torch.Tensor:
        torch.manual_seed(0)
        w = distributed.World(2, rank)
        distributed.seed_rank(0, w)
        if tensors is not None:
            distributed.restore_rng(tensors, w, 0, 10)
        return torch.rand(3)
    assert not torch.equal(draw(0), draw(1))  # rank 0 keeps the one-process stream, rank 1 has another
    torch.manual_seed(5)
    saved, expected = torch.get_rng_state(), torch.rand(3)
    assert torch.equal(draw(1, {"rng.rank1.torch": saved}), expected)


def test_torchrun_mistakes_are_one_line_errors(monkeypatch, tmp_path, capsys, reliability):
    from dlforge.cli import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    cases = [({"RANK": "0"}, ["--max-steps", "1"], "--out: required under torchrun"),
             ({"RANK": "0"}, ["--batch-size", "1", "--out", "r"], "--batch-size 1: the global batch needs at least "
                                                                   "one sample per process (2 processes)"),
             ({"RANK": "2"}, ["--out", "r"], "RANK 2: expected 0..1"),
             ({"RANK": "one"}, ["--out", "r"], "expected integers")]
    for env_, argv, message in cases:
        monkeypatch.setenv("RANK", env_["RANK"])
        assert main(["train", "mlp", "--img-size", "8", "--no-progress", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    reliability.record("torchrun mistakes: no `--out`, fewer samples than processes, a bad RANK",
                       "one line on stderr, exit code 2", len(cases))

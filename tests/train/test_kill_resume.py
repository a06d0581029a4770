"""Nothing lost: a training process killed with SIGKILL at an arbitrary step between checkpoints, then
resumed with --resume, ends bit-for-bit where an uninterrupted run ends — weights, optimiser state, RNG
state, an LSTM's carried hidden state (all in the checkpoint) and metrics.jsonl (wall-clock fields aside).

Real processes (`python -m dlforge train`), a real kill. The kill lands at a seeded, randomly chosen
checkpoint plus a random delay, so it falls anywhere: mid-step, mid-epoch, between a metrics line and
its checkpoint, during a checkpoint write. Whatever it hits, the result must not change. The four
families run side by side (one thread each) to keep the test to a few seconds on 2 cores."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVERY = 120, 10
COMMON = ["--max-steps", str(STEPS), "--eval-every", str(EVERY), "--epochs", "1000", "--no-progress", "--seed", "3",
          "--lr", "3e-3", "--lr-schedule", "cosine", "--warmup-steps", "10"]
TEXT = ["--batch-size", "8", "--block-size", "16", "--eval-tokens", "0", "--dropout", "0.1"]
SPEECH = ["--langs", "en", "--train-clips", "16", "--val-numbers", "2", "--test-numbers", "2", "--width", "16",
          "--layers", "1", "--n-mels", "16", "--batch-size", "4", "--dropout", "0.1"]
CASES = {  # every one has dropout: the RNG state must come back too
    "cnn-small": ["--data", "folder", "--data-dir", "{folder}", "--img-size", "8", "--batch-size", "32"],  # + seeded
    # augmentation, images read from the decoded-image cache (the digits written out as PNG files)
    "lstm": ["--data-file", "{text}", "--layers", "1", "--width", "32", *TEXT],   # + carried hidden state
    "gpt-tiny": ["--data-file", "{text}", *TEXT],
    "asr-lstm-small": ["--data", "spoken-numbers", *SPEECH],                    # + seeded speed, noise, SpecAugment
}


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def write_text(path: Path, n: int = 100) -> Path:
    rng = random.Random(0)
    lines = ["the cat sat on the mat.", "the dog ran to the park.", "a bird sang in the tree."]
    path.write_text("".join(f"{rng.choice(['ANNA', 'BEN'])}:\n{rng.choice(lines)}\n\n" for _ in range(n)))
    return path


def write_digits_folder(root: Path) -> Path:
    """scikit-learn's digits as a folder of PNG files, one sub-folder per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img * (255 / 16)).astype(np.uint8)).save(root / str(y) / f"{i:04d}.png")
    return root


def start(args: list[str], out: Path) -> subprocess.Popen:
    log = open(out.with_name(out.name + ".log"), "w")
    return subprocess.Popen([sys.executable, "-m", "dlforge", "train", *args, "--out", str(out)], cwd=out.parent,
                            env=env(), stdout=log, stderr=subprocess.STDOUT)


def log_tail(out: Path) -> str:
    return out.with_name(out.name + ".log").read_text()[-2000:]


def logged_steps(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(x)["step"] for x in lines if x.endswith("}")), default=0)


def metrics(out: Path) -> list[dict]:
    wall = lambda k: k == "time" or k.endswith("_per_s")  # noqa: E731
    return [{k: v for k, v in json.loads(x).items() if not wall(k)} for x in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_tensors(a: Path, b: Path, what: str) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys(), f"{what}: {sorted(ta.keys() ^ tb.keys())}"
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{what}: {k} differs"


def kill_between_checkpoints(procs: dict[str, tuple[subprocess.Popen, Path]], seed: int) -> dict[str, int]:
    """SIGKILL each process once its run has logged a seeded checkpoint step (the second or a later one, so
    that a checkpoint exists), after a random delay. -> the step each one had logged when killed."""
    rng = random.Random(seed)
    plan = {m: (rng.choice([2 * EVERY, 3 * EVERY, 4 * EVERY]), rng.uniform(0, 0.05)) for m in procs}
    seen: dict[str, float] = {}
    killed: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while len(killed) < len(procs) and time.monotonic() < deadline:
        for m, (p, out) in procs.items():
            if m in killed or p.poll() is not None:
                killed.setdefault(m, -1)
                continue
            target, delay = plan[m]
            if m not in seen and logged_steps(out) >= target:
                seen[m] = time.monotonic() + delay
            if m in seen and time.monotonic() >= seen[m]:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                killed[m] = logged_steps(out)
        time.sleep(0.002)
    return killed


def test_sigkill_then_resume_is_bit_exact(tmp_path, reliability):
    text, folder = write_text(tmp_path / "lines.txt"), write_digits_folder(tmp_path / "digits")
    cases = dict(CASES)
    if shutil.which("espeak-ng") is None:  # the speech case needs its corpus spoken by eSpeak NG
        cases.pop("asr-lstm-small")
    else:  # made once here, before the runs that share it start
        from dlforge.data.speech import spoken_numbers
        spoken_numbers(("en",), 16, 2, 2)
    args = {m: [m, *(a.replace("{text}", str(text)).replace("{folder}", str(folder)) for a in extra), *COMMON]
            for m, extra in cases.items()}
    whole = {m: start(args[m], tmp_path / f"{m}-whole") for m in cases}
    parts = {m: (start(args[m], tmp_path / f"{m}-part"), tmp_path / f"{m}-part") for m in cases}
    killed = kill_between_checkpoints(parts, seed=7)
    for m, p in whole.items():
        assert p.wait(timeout=120) == 0, log_tail(tmp_path / f"{m}-whole")
    for m, (p, out) in parts.items():
        assert p.returncode == -signal.SIGKILL, f"{m}: finished before the kill\n{log_tail(out)}"
        assert 0 < killed[m] < STEPS
    resumed = {m: start(args[m] + ["--resume"], out) for m, (_, out) in parts.items()}
    for m, p in resumed.items():
        assert p.wait(timeout=120) == 0, log_tail(tmp_path / f"{m}-part")
    for m in cases:
        a, b = tmp_path / f"{m}-whole", tmp_path / f"{m}-part"
        for which in ("last", "best"):
            assert_same_tensors(a / "checkpoints" / f"{which}.safetensors", b / "checkpoints" / f"{which}.safetensors",
                                f"{m} {which}")
        assert metrics(a) == metrics(b), m
        assert not list((b / "checkpoints").glob(".*.tmp")), f"{m}: a killed write's temporary file was left behind"
    reliability.record("training killed with SIGKILL at a random step between checkpoints, then `--resume` "
                       "(cnn-small with augmentation on a PNG folder read from the image cache, lstm with carried "
                       "state, gpt-tiny, asr-lstm-small with seeded audio perturbation; all with dropout)",
                       "weights, optimiser and RNG state and metrics bit-for-bit those of an uninterrupted run",
                       cases=len(cases))


FAST = ["train", "mlp", "--data", "digits", "--img-size", "8", "--hidden", "16", "--batch-size", "64", "--eval-every", "5",
        "--epochs", "100", "--no-progress"]


def test_resume_repairs_what_a_kill_can_leave(tmp_path, reliability, one_thread):
    """The instants the kill above rarely hits, made on purpose: after a metrics line but before its
    checkpoint (same step), after the last checkpoint but before best was linked to it, mid-write."""
    from dlforge.cli import main
    from dlforge.train.checkpoint import read_meta
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main([*FAST, "--max-steps", "20", "--out", str(whole)]) == 0
    assert main([*FAST, "--max-steps", "10", "--out", str(part)]) == 0
    ck = part / "checkpoints"
    assert read_meta(ck / "last.safetensors")["best_step"] == 10  # the step-10 evaluation was the best so far
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines + [lines[-1], '{"step": 1']) + "\n")  # logged, torn
    (ck / "best.safetensors").unlink()
    (ck / ".last.safetensors.x1y2.tmp").write_bytes(b"half a checkpoint")
    assert main([*FAST, "--max-steps", "20", "--out", str(part), "--resume"]) == 0
    for which in ("last", "best"):
        assert_same_tensors(whole / "checkpoints" / f"{which}.safetensors", ck / f"{which}.safetensors", which)
    assert metrics(whole) == metrics(part)
    assert not list(ck.glob(".*.tmp"))
    reliability.record("kill after a metrics line but before its checkpoint (same step), before `best` was "
                       "linked, mid-write (made on purpose, then `--resume`)",
                       "duplicate and torn lines dropped, `best` relinked, temporary file removed: "
                       "bit-for-bit the uninterrupted run", 3)


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, reliability, one_thread):
    from dlforge.cli import main
    out = tmp_path / "r"
    assert main([*FAST, "--max-steps", "5", "--out", str(out)]) == 0
    first = metrics(out)
    for again in ([], ["--resume"]):  # the same command, or the same with --resume
        for f in (out / "checkpoints").iterdir():  # as if killed while writing its first checkpoint
            f.unlink()
        (out / "checkpoints" / ".last.safetensors.a1.tmp").write_bytes(b"torn")
        (out / "metrics.jsonl").write_text('{"step": 5, "loss": 9.0}\n{"st')
        (out / "report.json").unlink(missing_ok=True)  # written at the end: a run killed this early has none
        assert main([*FAST, "--max-steps", "5", "--out", str(out), *again]) == 0
        assert metrics(out) == first and not list((out / "checkpoints").glob(".*.tmp"))
    reliability.record("kill before the first checkpoint was complete, then the same command (with or without "
                       "`--resume`)", "a fresh run, equal to the first; nothing of the killed attempt kept", 2)

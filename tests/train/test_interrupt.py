"""Ctrl-C keeps what was trained: the first SIGINT (or SIGTERM) lets the step finish, writes a mid-epoch
checkpoint, says on its own line what was kept and the command that continues, and exits 130; that command
ends bit-for-bit where an uninterrupted run ends. A second signal stops at once and writes nothing.

Real processes (`python -m dlforge train`) and real signals, as in test_kill_resume.py; the processes
run side by side to keep the test to a few seconds on 2 cores."""
from __future__ import annotations

import hashlib
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dlforge.train.checkpoint import read_meta
from dlforge.train.interrupt import StopOnSignal, TrainingInterrupted, resume_command
from tests.train.test_kill_resume import assert_same_tensors, env, log_tail, metrics, start, write_text

STEPS, EVERY, AFTER = 100, 10, 20  # signalled after the checkpoint of step AFTER: mid-epoch, well before STEPS
COMMON = ["--max-steps", str(STEPS), "--eval-every", str(EVERY), "--epochs", "1000", "--seed", "3", "--lr", "3e-3",
          "--lr-schedule", "cosine", "--warmup-steps", "10"]
CASES = {  # one family per signal; each epoch is longer than STEPS (162 and 219 batches)
    "SIGINT": ["cnn-small", "--data", "digits", "--img-size", "8", "--batch-size", "8"],
    "SIGTERM": ["gpt-tiny", "--data-file", "{text}", "--batch-size", "8", "--block-size", "16", "--eval-tokens", "0",
                "--dropout", "0.1"],
}
MESSAGE = re.compile(r"^dlforge: interrupted at step (\d+): checkpoint (.+); continue with: (.+)$", re.MULTILINE)


@pytest.fixture(autouse=True)
def sigint_delivered():
    """A shell's background job (`make test &`, nohup, a CI step run that way) starts with SIGINT ignored, and
    dlforge rightly leaves an ignored signal ignored. These tests send it, so they restore Python's handler
    for the test process and, through exec, SIG_DFL for the training processes they start."""
    old = signal.getsignal(signal.SIGINT)
    if old is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def wait_for(cond, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def signal_after_checkpoint(parts: dict[str, subprocess.Popen], tmp_path: Path) -> None:
    """Send each process its signal a seeded 5-30 ms after it has written the checkpoint of step AFTER, so
    that the signal lands between two checkpoints; all are watched at once."""
    rng, left, at = random.Random(5), dict(parts), {}

    def due() -> bool:
        for s, p in list(left.items()):
            meta = read_meta(tmp_path / f"{s}-part" / "checkpoints" / "last.safetensors") or {}
            if s not in at and (meta.get("step", 0) >= AFTER or p.poll() is not None):
                at[s] = time.monotonic() + rng.uniform(0.005, 0.03)
            if s in at and time.monotonic() >= at[s]:
                p.send_signal(getattr(signal, s))
                del left[s]
        return not left
    wait_for(due, f"step {AFTER}")


def run_command(command: str, log: Path) -> subprocess.Popen:
    """Start the `dlforge ...` command line the trainer printed, with this interpreter and this checkout."""
    head, *rest = shlex.split(command)
    assert head == "dlforge", command
    return subprocess.Popen([sys.executable, "-m", "dlforge", *rest], env=env(), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def test_first_signal_keeps_a_checkpoint_that_resumes_bit_exact(tmp_path, reliability):
    text = write_text(tmp_path / "lines.txt", n=1000)
    args = {s: [a.replace("{text}", str(text)) for a in extra] + COMMON for s, extra in CASES.items()}
    whole = {s: start(args[s] + ["--no-progress"], tmp_path / f"{s}-whole") for s in CASES}
    parts = {s: start(args[s], tmp_path / f"{s}-part") for s in CASES}  # with the progress bar
    signal_after_checkpoint(parts, tmp_path)
    for s, p in parts.items():
        log = tmp_path / f"{s}-part.log"
        assert p.wait(timeout=60) == 130, log_tail(log.with_suffix(""))
        out = log.read_text()
        found = MESSAGE.findall(out)  # ^...$ per line: not glued to the progress bar
        assert len(found) == 1 and "Traceback" not in out, out[-2000:]
        step, ck, command = int(found[0][0]), Path(found[0][1]), found[0][2]
        meta = read_meta(ck)
        assert ck == tmp_path / f"{s}-part" / "checkpoints" / "last.safetensors" and meta["step"] == step, (ck, meta)
        assert AFTER <= step < STEPS and meta["step_in_epoch"] == step, "a mid-epoch checkpoint of the first epoch"
        assert "report:" not in out, "no final evaluation after an interrupt"
        parts[s] = run_command(command, tmp_path / f"{s}-resumed.log")
    for s in CASES:
        assert whole[s].wait(timeout=120) == 0, log_tail(tmp_path / f"{s}-whole")
        assert parts[s].wait(timeout=120) == 0, (tmp_path / f"{s}-resumed.log").read_text()[-2000:]
        a, b = tmp_path / f"{s}-whole", tmp_path / f"{s}-part"
        for which in ("last", "best"):
            assert_same_tensors(a / "checkpoints" / f"{which}.safetensors", b / "checkpoints" / f"{which}.safetensors",
                                f"{s} {which}")
        assert metrics(a) == metrics(b), s
    reliability.record("Ctrl-C (SIGINT) or SIGTERM during training, between checkpoints, then the printed "
                       "`--resume` command (cnn-small; gpt-tiny with dropout)",
                       "exit 130 after a mid-epoch checkpoint and a one-line message; the resumed run bit-for-bit "
                       "an uninterrupted one", cases=len(CASES))


def test_second_signal_stops_at_once_and_keeps_the_previous_checkpoint(tmp_path, reliability):
    """The two signals are sent while the process is stopped (SIGSTOP), so both arrive before the loop
    reaches its next step: the second must stop it there, with no new checkpoint. (Two SIGINTs would merge
    into one pending signal; SIGINT then SIGTERM do not.)"""
    out = tmp_path / "run"
    p = start(CASES["SIGINT"] + ["--epochs", "1000", "--no-progress"], out)  # checkpoints at epoch ends only
    ck = out / "checkpoints" / "last.safetensors"
    wait_for(lambda: (read_meta(ck) or {}).get("epoch") == 1 or p.poll() is not None, "the first epoch's checkpoint")
    p.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: Path(f"/proc/{p.pid}/stat").read_text().split(") ")[1][0] == "T", "SIGSTOP", timeout=10)
        kept = hashlib.sha256(ck.read_bytes()).hexdigest()
        p.send_signal(signal.SIGINT)
        p.send_signal(signal.SIGTERM)
    finally:
        p.send_signal(signal.SIGCONT)
    assert p.wait(timeout=30) == 130, log_tail(out)
    lines = out.with_name("run.log").read_text().splitlines()
    assert lines[-1] == "dlforge: interrupted" and not MESSAGE.search("\n".join(lines)), lines[-5:]
    assert not any("Traceback" in x for x in lines)
    assert hashlib.sha256(ck.read_bytes()).hexdigest() == kept and read_meta(ck)["step_in_epoch"] == 0
    reliability.record("a second Ctrl-C / SIGTERM before the first one's checkpoint is written",
                       "stops at once: exit 130, `dlforge: interrupted`, the previous checkpoint untouched")


def test_stop_on_signal_first_asks_second_raises_and_restores():
    """In-process: SIGINT twice (each delivered before the next line runs), then the old handler is back."""
    before = signal.getsignal(signal.SIGINT)
    with StopOnSignal(announce=False) as stop:
        assert not stop.requested and signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # not reached: the handler raises first
    assert signal.getsignal(signal.SIGINT) is before


def test_stop_on_signal_leaves_other_threads_and_ignored_signals_alone():
    seen = []
    t = threading.Thread(target=lambda: seen.append(StopOnSignal().__enter__()._old))
    t.start()
    t.join()
    assert seen == [{}]  # Python runs handlers in the main thread only: nothing to install elsewhere
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. a background job started by a shell
    try:
        with StopOnSignal(announce=False):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_the_resume_command_repeats_the_changed_training_options():
    cmd = resume_command("gpt-tiny", Path("runs/my run"), {"lr": 0.003, "max_steps": 100, "progress": False,
                                                          "init_from": "w.safetensors", "tensorboard": True})
    assert cmd == "dlforge train gpt-tiny --out 'runs/my run' --resume --lr 0.003 --max-steps 100 --no-progress " \
                  "--tensorboard"
    e = TrainingInterrupted(37, Path("runs/x/checkpoints/last.safetensors"), "dlforge train gpt-tiny --resume")
    assert isinstance(e, KeyboardInterrupt) and not isinstance(e, Exception)
    assert str(e) == ("interrupted at step 37: checkpoint runs/x/checkpoints/last.safetensors; "
                      "continue with: dlforge train gpt-tiny --resume")


def test_under_torchrun_rank_0_decides_and_the_run_resumes(tmp_path, reliability):
    """Ctrl-C reaches torchrun, which passes SIGINT on to each worker (they run in sessions of their own):
    the ranks stop at rank 0's step, save one checkpoint together, rank 0 alone prints, and the printed
    command continues the run (on one process)."""
    from tests.train.test_distributed import launch
    text, out = write_text(tmp_path / "lines.txt", n=300), tmp_path / "run"
    args = ["lstm", "--data-file", str(text), "--layers", "1", "--width", "32", "--batch-size", "7", "--block-size",
            "16", "--eval-tokens", "0", "--eval-every", str(EVERY), "--epochs", "1000", "--max-steps", "60",
            "--no-progress"]
    p = launch(2, args, out)
    ck = out / "checkpoints" / "last.safetensors"
    wait_for(lambda: (read_meta(ck) or {}).get("step", 0) >= AFTER or p.poll() is not None, f"step {AFTER}")
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)  # torchrun's own exit code and traceback are torchrun's
    found = MESSAGE.findall(out.with_name("run.log").read_text())
    assert len(found) == 1, log_tail(out)
    step, command = int(found[0][0]), found[0][2]
    assert AFTER <= step < 60 and read_meta(ck)["step"] == step
    resumed = run_command(command, tmp_path / "resumed.log")
    assert resumed.wait(timeout=120) == 0, (tmp_path / "resumed.log").read_text()[-2000:]
    assert [r["step"] for r in metrics(out)] == list(range(EVERY, 61, EVERY))
    reliability.record("Ctrl-C to `torchrun --nproc_per_node=2` (gloo) during training, then the printed command",
                       "both ranks stop at rank 0's step with one checkpoint and one message; the run resumes on "
                       "one process")

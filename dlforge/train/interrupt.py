"""Ctrl-C and SIGTERM during training keep what was trained.

The first SIGINT or SIGTERM only sets `StopOnSignal.requested`: Trainer.fit checks it before each optimiser
step, so the step under way finishes, then the loop writes a clean mid-epoch checkpoint (as --max-steps
does), says how to continue and raises TrainingInterrupted. A second signal raises KeyboardInterrupt at
once; checkpoint writes are atomic (runs.py), so the previous checkpoint is left as it was."""
from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by Trainer.fit once the interrupted run's checkpoint is written. A KeyboardInterrupt, so
    `except Exception` lets it through and the process still ends as interrupted (exit code 130)."""

    def __init__(self, step: int, checkpoint: Path, command: str):
        self.step, self.checkpoint, self.command = step, checkpoint, command
        super().__init__(f"interrupted at step {step}: checkpoint {checkpoint}; continue with: {command}")


class StopOnSignal:
    """`with StopOnSignal() as stop: ... stop.requested ...` — True after the first SIGINT/SIGTERM; a
    second one raises KeyboardInterrupt. Installed only in the main thread (the one Python runs handlers
    in) and not over a signal the process ignores (a background job's SIGINT); restored on exit."""

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce  # print a line when the first signal arrives (rank 0 only under torchrun)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, old in self._old.items():
            signal.signal(s, signal.SIG_DFL if old is None else old)  # None: a handler not set from Python
        self._old = {}
        return False

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:  # on a new line: the progress bar may be mid-line
            print(f"\ndlforge: {signal.Signals(signum).name}: stopping after this step at a checkpoint "
                  f"(again to stop at once)", file=sys.stderr, flush=True)


def resume_command(model: str, out: Path, changed: dict) -> str:
    """The `dlforge train` command that continues run `out`, with the training options in `changed`
    (TrainConfig field -> value) repeated; --resume alone keeps the run's own recipe, data and budget, so the
    trainer passes none. init_from is never repeated: the checkpoint replaces those weights; eval_batch_size
    has no flag."""
    args = ["dlforge", "train", model, "--out", str(out), "--resume"]
    for k, v in changed.items():
        if k == "progress":
            args += [] if v else ["--no-progress"]
        elif k == "tensorboard":
            args += ["--tensorboard"] if v else []
        elif k not in ("init_from", "eval_batch_size") and v is not None:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return shlex.join(args)

"""Process-wide CPU settings (dlforge/perf.py): subnormal floats flushed to zero on every thread."""
import platform
import subprocess
import sys

import pytest

# 1e-30 · 1e-9 = 1e-39 is subnormal in fp32: kept as it is by default, zero where the thread flushes. 2^22 elements
# are split between the OpenMP threads, so every thread computes some of them.
PROBE = ("import torch; torch.set_num_threads(2); y = torch.full((1 << 22,), 1e-30) * 1e-9; "
         "print(int(y.count_nonzero()))")


def _nonzero(prelude: str) -> int:
    out = subprocess.run([sys.executable, "-c", prelude + PROBE], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"),
                    reason=f"flush-to-zero is an x86 (SSE3) and ARM mode; this CPU is {platform.machine()}")
def test_flushing_first_holds_on_every_thread_and_import_alone_changes_nothing():
    assert _nonzero("") == 1 << 22                       # torch alone keeps them (so this test can fail)
    assert _nonzero("import dlforge; ") == 1 << 22       # a library import leaves the program's floats alone
    assert _nonzero("from dlforge.perf import flush_denormals; flush_denormals(); ") == 0   # what cli.main does


def test_training_flushes_while_it_runs_and_restores_the_mode(tmp_path):
    import numpy as np

    import dlforge
    from dlforge.perf import flushing_denormals
    from dlforge.train.callbacks import Callback

    class Watch(Callback):
        seen: list = []

        def on_step_end(self, trainer):
            self.seen.append(flushing_denormals())

    x = np.random.default_rng(0).integers(0, 255, (40, 8, 8), dtype=np.uint8)
    assert not flushing_denormals()
    dlforge.train("mlp", data=(x, np.arange(40) % 2), out=tmp_path / "m", img_size=8, hidden=(8,), max_steps=3,
                  progress=False, callbacks=[Watch()])
    assert Watch.seen == [True] * 3 and not flushing_denormals()


def test_the_command_line_restores_the_mode_for_a_program_that_calls_it():
    from dlforge.cli import main
    from dlforge.perf import flushing_denormals
    assert main(["models"]) == 0 and not flushing_denormals()

"""Train a tiny speech recognizer on English numbers spoken by eSpeak NG, then transcribe audio in memory.

    python examples/transcribe_numbers.py [OUT_DIR]      # needs the espeak-ng program (make setup installs it)
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np

import dlforge

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("out_dir", nargs="?", help="where the runs go (default: a new temporary folder)")
out = Path(ap.parse_args().out_dir or tempfile.mkdtemp(prefix="dlforge-"))
if (out / "asr").exists():  # dlforge.train never trains over a run
    ap.error(f"{out / 'asr'} already holds this example's run: give another OUT_DIR, or none (a new temporary folder)")

run = dlforge.train("asr-lstm-small", data="spoken-numbers", out=out / "asr", langs="en", train_clips=48,
                    val_numbers=4, test_numbers=4, width=48, layers=1, batch_size=8, max_steps=60, eval_every=30,
                    lr=3e-3, progress=False)
print(f"test WER {run.report['wer']:.3f}, CER {run.report['cer']:.3f} on {run.report['test_clips']} clips of "
      f"held-out numbers and voices (a real model needs minutes: see the README)")

asr = dlforge.load(run.path)                          # characters and weights, from the run directory
t = np.arange(8000) / 8000
tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)   # one second of a tone at 8 kHz
for row in asr.transcribe([(tone, 8000)], beam=4):    # files work too: asr.transcribe("clip.wav")
    print(f"{row['audio']} ({row['seconds']} s) -> {row['text']!r}")

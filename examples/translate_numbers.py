"""Train a tiny encoder-decoder to spell numbers in English words, from (source, target) pairs in memory.

    python examples/translate_numbers.py [OUT_DIR]
"""
import argparse
import tempfile
from pathlib import Path

from num2words import num2words

import dlforge

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("out_dir", nargs="?", help="where the runs go (default: a new temporary folder)")
out = Path(ap.parse_args().out_dir or tempfile.mkdtemp(prefix="dlforge-"))
if (out / "numbers").exists():  # dlforge.train never trains over a run
    ap.error(f"{out / 'numbers'} already holds this example's run: give another OUT_DIR, or none (a new temporary folder)")

pairs = [(str(n), num2words(n)) for n in range(100)]   # ("42", "forty-two"), ...; shuffled, then split

run = dlforge.train("transformer-tiny", data=pairs, out=out / "numbers", tokenizer="char", max_len=24,
                    width=64, layers=2, heads=2, val_fraction=0.1, test_fraction=0.1,  # 80 / 10 / 10 pairs
                    batch_size=16, max_steps=200, eval_every=100, lr=3e-3, progress=False)
print(f"test exact match {run.report['exact_match']:.3f}, character error rate {run.report['cer']:.3f} "
      f"on {run.report['test_pairs']} held-out pairs")

tr = dlforge.load(run.path)                    # tokenizers and weights, from the run directory
for row in tr.translate(["7", "21", "58"]):    # greedy; beam=4 for beam search
    print(f"{row['source']} -> {row['translation']}")

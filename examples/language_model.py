"""Train a tiny GPT on a few sentences given in memory, then generate, stream and rank next tokens.

    python examples/language_model.py [OUT_DIR]
"""
import argparse
import tempfile
from pathlib import Path

import dlforge

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("out_dir", nargs="?", help="where the runs go (default: a new temporary folder)")
out = Path(ap.parse_args().out_dir or tempfile.mkdtemp(prefix="dlforge-"))
if (out / "gpt").exists():  # dlforge.train never trains over a run
    ap.error(f"{out / 'gpt'} already holds this example's run: give another OUT_DIR, or none (a new temporary folder)")

text = ("the cat sat on the mat. the dog sat on the log. "
        "a bird sang in the tree. the sun rose over the hill. ") * 40   # 4,040 characters

run = dlforge.train("gpt-tiny", data=text, out=out / "gpt", block_size=32, width=48, layers=2, heads=2,
                    batch_size=32, max_steps=150, eval_every=50, lr=3e-3, progress=False)
print(f"validation loss {run.report['loss']:.3f}, perplexity {run.report['perplexity']:.2f}")

lm = dlforge.load(run.path)                    # char tokenizer and weights, from the run directory
print("generate:", repr(lm.generate("the cat", max_new_tokens=40, temperature=0.5)))

print("stream:   ", "the dog", end="")
for piece in lm.stream("the dog", max_new_tokens=40, temperature=0.5):
    print(piece, end="", flush=True)           # each piece as soon as it is sampled
print()

for t in lm.next_tokens("the cat sat on the ", top_k=3):
    print(f"next token {t['token']!r}: p = {t['probability']:.3f}")

"""Train a small classifier on scikit-learn's digits, given in memory as arrays, then predict with it.

    python examples/classify_digits.py [OUT_DIR]
"""
import argparse
import tempfile
from pathlib import Path

from sklearn.datasets import load_digits

import dlforge

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("out_dir", nargs="?", help="where the runs go (default: a new temporary folder)")
out = Path(ap.parse_args().out_dir or tempfile.mkdtemp(prefix="dlforge-"))
if (out / "digits-mlp").exists():  # dlforge.train never trains over a run
    ap.error(f"{out / 'digits-mlp'} already holds this example's run: give another OUT_DIR, or none (a new temporary folder)")

digits = load_digits()                                   # 1,797 images of 8x8, values 0..16
images = (digits.images * (255 / 16)).astype("uint8")    # (N, 8, 8) uint8
labels = digits.target                                   # (N,) ints 0..9
data = {"images": images[:1500], "labels": labels[:1500],            # in memory: train ...
        "test_images": images[1500:], "test_labels": labels[1500:]}  # ... and a held-out test split

run = dlforge.train("mlp", data=data, out=out / "digits-mlp", img_size=8, hidden=[64],
                    max_steps=60, eval_every=20, progress=False)
print(f"test accuracy: {run.report['accuracy']:.4f} on {run.report['test_images']} images")

clf = dlforge.load(run.path)                             # the run directory alone rebuilds the model
for result, truth in zip(clf.predict(images[1500:1503], top_k=2), labels[1500:1503]):
    best = result["top"][0]
    print(f"true {truth}: predicted {best['class']} (p = {best['probability']:.3f})")

"""Train a tiny text-conditioned diffusion model on scikit-learn's digits, then sample from a caption.

    python examples/text_to_image.py [OUT_DIR]
"""
import argparse
import tempfile
from pathlib import Path

import dlforge

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("out_dir", nargs="?", help="where the runs go (default: a new temporary folder)")
out = Path(ap.parse_args().out_dir or tempfile.mkdtemp(prefix="dlforge-"))
if (out / "unet").exists():  # dlforge.train never trains over a run
    ap.error(f"{out / 'unet'} already holds this example's run: give another OUT_DIR, or none (a new temporary folder)")

# data="digits": every image captioned from its class ("a handwritten 3", ...); or a list of (image, caption)
run = dlforge.train("unet-tiny", data="digits", out=out / "unet", img_size=8, timesteps=100,
                    batch_size=32, max_steps=40, eval_every=20, progress=False)
print(f"best validation loss (eps MSE) {run.report['best_val_loss']:.4f} after {run.report['steps']} steps")

diffuser = dlforge.load(run.path)              # the EMA weights and the caption vocabulary
images = diffuser.sample(["a handwritten 3"], n=2, steps=20, guidance=3.0, seed=0)   # PIL images, DDIM
path = out / "three.png"
images[0].save(path)
print(f"wrote {path} ({images[0].size[0]}x{images[0].size[1]} {images[0].mode}, {len(images)} sampled)")

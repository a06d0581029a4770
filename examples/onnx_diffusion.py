"""Text to image from `dlforge export RUN --format onnx` with NumPy and ONNX Runtime only (no torch, no dlforge):
deterministic DDIM (η = 0) with classifier-free guidance, the loop of `dlforge sample`.

    python examples/onnx_diffusion.py RUN/onnx "a photo of a shoe" out.png
"""
import argparse
import json
import re

import numpy as np
import onnxruntime as ort


def sample(folder, prompts, noise, guidance=3.0):
    """prompts: captions; noise: float32 x_T ~ N(0, I), (N, C, H, W) -> uint8 images (N, C, H, W)."""
    meta = json.load(open(f"{folder}/model.json"))
    text, a, ts = meta["text"], np.array(meta["scheduler"]["alphas_cumprod"]), meta["scheduler"]["ddim_timesteps"]
    vocab = {w: i for i, w in enumerate(json.load(open(f"{folder}/{text['tokenizer']}"))["vocab"])}
    ids = np.zeros((2 * len(prompts), text["max_len"]), np.int64)            # captions, then null captions
    for i, p in enumerate(prompts):
        row = [1] + [vocab.get(w, 2) for w in re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", p.lower())]
        ids[i, :len(row)], ids[len(prompts) + i] = row, text["null_ids"]
    states, mask = ort.InferenceSession(f"{folder}/text_encoder.onnx").run(None, {"ids": ids})
    unet, x = ort.InferenceSession(f"{folder}/unet_step.onnx"), noise.astype(np.float32)
    for i, t in enumerate(ts):
        a_t, a_prev = float(a[t]), float(a[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        feed = {"x_t": np.concatenate([x, x]), "t": np.full(2 * len(x), t, np.int64), "states": states, "mask": mask}
        eps_c, eps_u = np.split(unet.run(None, feed)[0], 2)
        eps = eps_u + guidance * (eps_c - eps_u)                             # classifier-free guidance
        x0 = np.clip((x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5, -1, 1)       # x̂_0, clipped
        eps = (x - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5                       # the ε consistent with it
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps                   # DDIM, η = 0
    return np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="RUN/onnx, written by `dlforge export RUN`")
    ap.add_argument("prompt", help='what to draw, e.g. "a photo of a shoe"')
    ap.add_argument("out", help="the PNG to write")
    folder, prompt, out = vars(ap.parse_args()).values()
    image = json.load(open(f"{folder}/model.json"))["image"]
    noise = np.random.default_rng(0).standard_normal((1, image["channels"], image["size"], image["size"]))
    from PIL import Image
    Image.fromarray(sample(folder, [prompt], noise)[0, 0]).save(out)
    print(out)

"""ONNX export on this CPU: ONNX Runtime fp32 and int8 (dynamic quantisation) against torch eager, same threads.

  cnn on Fashion-MNIST: images/s from raw uint8 pixels (the test transform included on both sides) at batch 1
                        and 256; test accuracy fp32 / int8 (static, what --int8 writes for classifiers) / int8
                        dynamic (for comparison)
  gpt-small:            greedy generation tokens/s with the KV cache (decoder_with_past.onnx against the model
                        with its KVCache, and against GPTDecoder, what `dlforge generate` runs), batch 1 and 256;
                        validation loss fp32 / int8 (logits.onnx)

    python -m benchmarks.export --cnn RUN --gpt RUN [--seconds 3] [--save | --out FILE.json]

With --save (or --out) a family not measured this time keeps its figures from the file it writes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import dlforge
from benchmarks.pairs import ROOT, command, report, save_options, saved_path
from dlforge.models.layers import KVCache


def rate(fn, items: int, seconds: float) -> float:
    """items per second of fn() (one warm-up call, then as many calls as fit in `seconds`, at least 3)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * items / (time.perf_counter() - t0)


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def bench_cnn(run: str, seconds: float) -> dict:
    from dlforge.recipes.classify import DataConfig, prepare_data
    clf = dlforge.load(run, device="cpu")
    folder = Path(clf.export(Path(run) / "onnx", int8=True)["out"])
    cfg = clf.config
    data = prepare_data(DataConfig(**cfg.data), cfg.facts.get("data_seed", 0), ("test",))
    x, y = data.test_x, data.test_y.numpy()
    tf, model = clf._transform(), clf.model
    from dlforge.export.onnx import quantize
    dynamic = folder.parent / "onnx-dynamic-int8"  # what --int8 would be without calibration (ConvInteger)
    dynamic.mkdir(exist_ok=True)
    shutil.copyfile(folder / "classifier.onnx", dynamic / "classifier.onnx")
    sessions = {"onnxruntime_fp32": session(folder / "classifier.onnx"),
                "onnxruntime_int8": session(folder / "classifier.int8.onnx"),
                "onnxruntime_int8_dynamic": session(quantize(dynamic / "classifier.onnx"))}

    @torch.inference_mode()
    def torch_logits(batch: torch.Tensor) -> np.ndarray:
        return model(tf(batch)).numpy()
    runners = {"torch_eager": torch_logits,
               **{k: (lambda b, s=s: s.run(None, {"images": b.numpy()})[0]) for k, s in sessions.items()}}
    out = {"run": run, "data": cfg.data["name"], "img_size": cfg.data["img_size"], "test_images": len(y)}
    for name, fn in runners.items():
        r = {f"images_per_s_batch_{b}": rate(lambda: fn(x[:b]), b, seconds) for b in (1, 256)}
        pred = np.concatenate([fn(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
        r["test_accuracy"] = float((pred == y).mean())
        out[name] = r
        print(name, {k: round(v, 4) for k, v in r.items()}, flush=True)
    return out


def bench_gpt(run: str, seconds: float, new_tokens: int = 64) -> dict:
    from dlforge.recipes.language_model import TextDataConfig, prepare
    lm = dlforge.load(run, device="cpu")
    if lm.model.block_size < 16 + new_tokens:  # was the generator's error, a traceback after the export
        sys.exit(f"--gpt {run}: its context is {lm.model.block_size} tokens; this benchmark generates {new_tokens} "
                 f"after a 16-token prompt (a gpt-small run has 256)")
    folder = Path(lm.export(Path(run) / "onnx", int8=True)["out"])
    meta = json.loads((folder / "model.json").read_text())
    model, L, H, hd = lm.model, meta["layers"], meta["heads"], meta["head_dim"]
    data = prepare(TextDataConfig(**lm.config.data), lm.tokenizer)
    prompt = data.val[:16].long()  # token files hold uint16 or int32 ids (dlforge/data/text.py)

    @torch.inference_mode()
    def torch_generate(B: int) -> None:
        cache = KVCache(L)
        logits, _ = model(prompt.repeat(B, 1), cache)
        for _ in range(new_tokens):
            logits, _ = model(logits[:, -1:].argmax(-1), cache)

    @torch.inference_mode()
    def decoder_generate(B: int) -> None:  # what `dlforge generate` runs: GPTDecoder (one row: its _step)
        dec = model.decoder()
        logits = dec(prompt.repeat(B, 1))
        for _ in range(new_tokens):
            logits = dec(logits[:, -1:].argmax(-1))

    def ort_generate(s: ort.InferenceSession, B: int) -> None:
        past = {f"past.{i}.{kv}": np.zeros((B, H, 0, hd), np.float32) for i in range(L) for kv in ("key", "value")}
        ids = np.repeat(prompt.numpy()[None], B, 0)
        for _ in range(new_tokens + 1):
            logits, *present = s.run(None, {"ids": ids, **past})
            past, ids = dict(zip(past, present)), logits[:, -1:].argmax(-1)

    # validation loss on the first 32,768 validation tokens in windows of block_size
    T = meta["block_size"]
    n = min(len(data.val) - 1, 32768) // T
    xs, ys = data.val[:n * T].long().view(n, T), data.val[1:n * T + 1].long().view(n, T).numpy()

    def loss(logits_fn) -> float:
        total = 0.0
        for i in range(0, n, 32):
            lg = logits_fn(xs[i:i + 32]).astype(np.float64)
            lg -= lg.max(-1, keepdims=True)
            logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
            total -= np.take_along_axis(logp, ys[i:i + 32, :, None], -1).sum()
        return total / (n * T)
    out = {"run": run, "new_tokens": new_tokens, "prompt_tokens": len(prompt), "val_tokens": n * T}
    with torch.inference_mode():
        torch_loss = loss(lambda b: model(b)[0].numpy())
    out["torch_eager"] = {f"tokens_per_s_batch_{B}": rate(lambda B=B: torch_generate(B), B * new_tokens, seconds)
                          for B in (1, 256)}
    out["torch_eager"]["val_loss"] = torch_loss
    print("torch_eager", out["torch_eager"], flush=True)
    out["torch_decoder"] = {f"tokens_per_s_batch_{B}": rate(lambda B=B: decoder_generate(B), B * new_tokens, seconds)
                            for B in (1, 256)}
    print("torch_decoder", out["torch_decoder"], flush=True)
    for q in ("fp32", "int8"):
        suffix = "" if q == "fp32" else ".int8"
        step, logits = session(folder / f"decoder_with_past{suffix}.onnx"), session(folder / f"logits{suffix}.onnx")
        r = {f"tokens_per_s_batch_{B}": rate(lambda B=B: ort_generate(step, B), B * new_tokens, seconds)
             for B in (1, 256)}
        r["val_loss"] = loss(lambda b: logits.run(None, {"ids": b.numpy()})[0])
        out[f"onnxruntime_{q}"] = r
        print(f"onnxruntime_{q}", r, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnn", help="a cnn run on fashion-mnist")
    ap.add_argument("--gpt", help="a gpt-small run")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    save_options(ap, ROOT / "benchmarks" / "results" / "export.json")
    a = ap.parse_args()
    result = {"command": command(), "torch": torch.__version__, "onnxruntime": ort.__version__,
              "threads": torch.get_num_threads()}
    path = saved_path(a)
    if path is not None and path.is_file():  # a family not measured this time keeps its last figures
        result = {**json.loads(path.read_text()), **result}
    if a.cnn:
        result["cnn"] = bench_cnn(a.cnn, a.seconds)
    if a.gpt:
        result["gpt"] = bench_gpt(a.gpt, a.seconds)
    for fam in ("cnn", "gpt"):
        if fam in result:
            r, unit = result[fam], "images_per_s" if fam == "cnn" else "tokens_per_s"
            result[fam]["speedup_vs_torch"] = {f"{k}_batch_{b}": r[k][f"{unit}_batch_{b}"] / r["torch_eager"][
                f"{unit}_batch_{b}"] for k in ("onnxruntime_fp32", "onnxruntime_int8") for b in (1, 256)}
            if "torch_decoder" in r:  # against what `dlforge generate` runs
                r["speedup_vs_torch_decoder"] = {f"{k}_batch_{b}": r[k][f"tokens_per_s_batch_{b}"] / r["torch_decoder"][
                    f"tokens_per_s_batch_{b}"] for k in ("onnxruntime_fp32", "onnxruntime_int8") for b in (1, 256)}
    print(json.dumps({f: result[f]["speedup_vs_torch"] for f in ("cnn", "gpt") if f in result}, indent=1))
    report(result, path, indent=2)


if __name__ == "__main__":
    main()

"""A run -> ONNX files and model.json, checked with ONNX Runtime; `--int8`: dynamic (weight) quantisation.

The exporter is torch.onnx.export's dynamo path (torch.export -> ONNX through onnxscript): it keeps the symbolic
axes (batch, tokens, past length) through the KV cache arithmetic and the positions derived from it, exports
the antialiased bilinear resize of the test transform (ONNX Resize, antialias=1), and is the path PyTorch
maintains. Except for rnn/lstm/gru: torch.export decomposes the fused cells into a loop unrolled over the example's
length (measured with torch 2.13: "marked dynamic but specialized to a constant (5)" for the time axis), while
the TorchScript exporter (dynamo=False) maps them to ONNX's own RNN/LSTM/GRU operators with any length.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from dlforge.errors import DlforgeError
from dlforge.export import graphs as G
from dlforge.runs import atomic_write_json

FORMATS = ("onnx",)
TOLERANCE = 1e-4   # max |ORT - torch| on the check inputs, relative to max(1, max |torch|)
DTYPES = {torch.uint8: "uint8", torch.int64: "int64", torch.float32: "float32", torch.bool: "bool"}


def _require() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise DlforgeError(f"--format onnx: needs the onnx, onnxscript and onnxruntime packages "
                           f"(pip install 'dlforge[export]'); {e.name} is not installed") from None


def check_out(out: Path) -> None:
    """An output folder is new, empty, or holds a previous dlforge export and nothing else: files directly in it,
    each named in its model.json (export replaces it whole, once the new one is written)."""
    if out.exists() and not out.is_dir():
        raise DlforgeError(f"--out {out}: is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        old = json.loads((out / "model.json").read_text())
        ours = {str(n) for n in old["files"]} if old.get("exported_by") == "dlforge" else set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = set()
    # a folder, a link or a name model.json does not list is not ours (before, its list was trusted: a name
    # "../x" deleted a file beside the folder, and a folder's name was an IsADirectoryError traceback)
    others = sorted(p.name for p in out.iterdir() if p.name not in ours or p.is_symlink() or not p.is_file())
    if others:
        raise DlforgeError(f"--out {out}: the folder holds other files ({', '.join(others[:3])}"
                           f"{', …' if len(others) > 3 else ''}); give a new or empty folder (a previous dlforge "
                           f"export there is replaced)")


def _swap_in(new: Path, out: Path) -> None:
    """The export written in `new` becomes `out`; a previous one there (check_out: only its own files) goes."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{new.name.rsplit('-', 1)[-1]}")
    out.rename(old)
    new.rename(out)
    shutil.rmtree(old)


def _io(names: dict, tensors=None) -> list[dict]:
    return [{"name": n, **({"dtype": DTYPES[t.dtype]} if tensors else {}), "shape": list(d)}
            for (n, d), t in zip(names.items(), tensors or [None] * len(names))]


def write_graph(graph: G.Graph, out: Path, int8: bool = False) -> dict:
    """Export one graph to out/NAME.onnx (and NAME.int8.onnx), check it on its example inputs with ONNX Runtime.
    -> its model.json entry: file(s), inputs and outputs (name, dtype, shape with named dynamic axes), the check."""
    import onnx
    from torch.export import Dim
    examples = tuple(t for t, _ in graph.inputs.values())
    dims = [{i: Dim.DYNAMIC for i, d in enumerate(dd) if isinstance(d, str)} for _, dd in graph.inputs.values()]
    module = graph.module.eval()
    path = out / f"{graph.name}.onnx"
    quiet = logging.getLogger("torch.onnx"), logging.getLogger("torch._dynamo"), logging.getLogger("torch.export")
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            names = dict(input_names=list(graph.inputs), output_names=list(graph.outputs))
            if graph.dynamo:
                torch.onnx.export(module, examples, str(path), dynamo=True, external_data=False,
                                  dynamic_shapes=_nest(module, dims), **names)
            else:
                axes = {n: {i: d for i, d in enumerate(dd) if isinstance(d, str)}
                        for n, dd in [*((n, d) for n, (_, d) in graph.inputs.items()), *graph.outputs.items()]}
                torch.onnx.export(module, examples, str(path), dynamo=False, dynamic_axes=axes, **names)
    except DlforgeError:
        raise
    except Exception as e:  # the exporter's own errors are pages long: the first line, and which graph
        raise DlforgeError(f"--format onnx: could not export the {graph.name} graph "
                           f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})") from None
    finally:
        for lg, lvl in zip(quiet, levels):
            lg.setLevel(lvl)
    proto = onnx.load(str(path))
    _name_axes(proto, graph)
    onnx.save(proto, str(path))
    entry = {"file": path.name, "doc": graph.doc, "inputs": _io({n: d for n, (_, d) in graph.inputs.items()},
                                                                  list(examples)),
             "outputs": _io(graph.outputs)}
    entry["check"] = {"max_abs_diff": check_graph(path, graph), "inputs": len(graph.examples) + 1}
    if int8:
        q = quantize(path, graph.calibration)
        entry["int8"] = {"file": q.name, "method": "dynamic" if graph.calibration is None else
                         f"static, calibrated on {sum(len(next(iter(f.values()))) for f in graph.calibration)} "
                         f"training images", "max_abs_diff": check_graph(q, graph, tolerance=None)}
    return entry


def _nest(module, dims: list[dict]):
    """dynamic_shapes in the structure of forward's signature: (ids, *past) takes (ids_dims, (past dims, ...))."""
    import inspect
    params = list(inspect.signature(module.forward).parameters.values())
    fixed = [p for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    if len(fixed) == len(params):
        return tuple(dims)
    return (*dims[:len(fixed)], tuple(dims[len(fixed):]))


def _name_axes(proto, graph: G.Graph) -> None:
    """The graph's inputs and outputs carry the axis names of model.json (the exporter's are s0, s1, ...);
    intermediate shapes are dropped (ONNX Runtime infers them; the exporter's can keep an example's size)."""
    for values, spec in ((proto.graph.input, {n: d for n, (_, d) in graph.inputs.items()}),
                         (proto.graph.output, graph.outputs)):
        for v in values:
            if v.name in spec:
                for axis, d in zip(v.type.tensor_type.shape.dim, spec[v.name]):
                    if isinstance(d, str):
                        axis.dim_param = d
                    else:
                        axis.dim_value = d
    del proto.graph.value_info[:]


def run_graph(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)


def check_graph(path: Path, graph: G.Graph, tolerance: float | None = TOLERANCE) -> float:
    """ONNX Runtime against torch on the example inputs and the graph's other examples -> the largest
    difference relative to max(1, |torch|); above `tolerance` (fp32 graphs) the export is refused."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for args in [tuple(t for t, _ in graph.inputs.values()), *graph.examples]:
        with torch.no_grad():
            ref = graph.module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run(None, {n: a.numpy() for n, a in zip(graph.inputs, args)})
        for r, g in zip(ref, got):
            r = r.numpy()
            if r.shape != g.shape:
                raise DlforgeError(f"--format onnx: the {graph.name} graph gives shape {g.shape}, torch {r.shape}")
            if r.dtype == bool:
                worst = max(worst, float((r != g).any()))
                continue
            worst = max(worst, float(np.abs(r - g).max() / max(1.0, np.abs(r).max())) if r.size else 0.0)
    if tolerance is not None and not worst <= tolerance:
        raise DlforgeError(f"--format onnx: the {graph.name} graph differs from torch by {worst:.2g} "
                           f"(more than {tolerance:g}) under ONNX Runtime {ort.__version__}")
    return worst


def quantize(path: Path, calibration: list[dict[str, np.ndarray]] | None = None) -> Path:
    """-> NAME.int8.onnx beside. Without calibration: dynamic quantisation (int8 weights of MatMul/Gemm/Conv/
    Gather, activations quantised on the fly). With calibration inputs (a classifier's training images): static
    QDQ quantisation of Conv/Gemm/MatMul, per-channel int8 weights and activation ranges measured on them (the
    preprocessing stays fp32): ONNX Runtime's fused int8 convolutions instead of ConvInteger, which is slower
    than fp32 on CPU (benchmarks/export.py)."""
    from onnxruntime import quantization as Q
    q = path.with_name(path.stem + ".int8.onnx")
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # its advice to pre-process first: shape inference, which the exporter did
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if calibration is None:
                Q.quantize_dynamic(str(path), str(q), weight_type=Q.QuantType.QInt8)
            else:
                reader = _Reader(calibration)
                Q.quantize_static(str(path), str(q), reader, quant_format=Q.QuantFormat.QDQ, per_channel=True,
                                  op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                                  activation_type=Q.QuantType.QUInt8, weight_type=Q.QuantType.QInt8)
    finally:
        root.setLevel(level)
    return q


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of input dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


# ---------------------------------------------------------------- a run
def export(handle, out: str | Path | None = None, format: str = "onnx", int8: bool = False) -> dict:
    """Write the run's graphs (see graphs.py), its tokenizer files and model.json into `out` (default RUN/onnx);
    every graph is checked against torch with ONNX Runtime before this returns. -> model.json's content."""
    if format not in FORMATS:
        raise DlforgeError(f"--format: expected one of {', '.join(FORMATS)}; got {format!r}")
    _require()
    out = Path(out) if out is not None else handle.path / "onnx"
    check_out(out)
    try:  # written beside it, then swapped in: an export stopped half-way left the old one deleted and its
        out.parent.mkdir(parents=True, exist_ok=True)  # folder holding files the retry refused
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    except OSError as e:
        raise DlforgeError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    try:
        body = _write_export(handle, tmp, int8)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), **body}


def _write_export(handle, out: Path, int8: bool) -> dict:
    """The graphs, the files they need and model.json, into the folder `out` -> model.json's content."""
    cfg = handle.config
    model = copy.deepcopy(handle.model).float().cpu().eval()  # the handle's own model stays where it is
    graphs, meta = FAMILIES[cfg.task](handle, model)
    if int8 and cfg.task == "classify":
        graphs[0].calibration = _calibration(handle)
    written = {g.name: write_graph(g, out, int8) for g in graphs}
    for name in meta.pop("copy", []):
        shutil.copyfile(handle.path / name, out / name)
    files = [*(e["file"] for e in written.values()), *(e["int8"]["file"] for e in written.values() if "int8" in e),
             *meta.get("files", []), "model.json"]
    body = {"exported_by": "dlforge", "format": 1, "dlforge_version": _version(), "run": str(handle.path),
            "checkpoint": str(handle.checkpoint), "task": cfg.task, "model": cfg.model, "model_kwargs": cfg.model_kwargs,
            "graphs": written, **meta, "files": files}
    atomic_write_json(out / "model.json", body)
    return body


def _version() -> str:
    import dlforge
    return dlforge.__version__


def _calibration(handle, n: int = 512, batch: int = 64) -> list[dict[str, np.ndarray]] | None:
    """n training images of a classifier's run, seeded, in batches (None where its data cannot be loaded:
    dynamic quantisation then, and model.json says so)."""
    from dlforge.recipes.classify import DataConfig, prepare_data
    cfg = handle.config
    try:
        x = prepare_data(DataConfig(**cfg.data), cfg.facts.get("data_seed", 0), ("train",)).train_x
    except DlforgeError:
        return None
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
    return [{"images": x[pick[i:i + batch]].numpy()} for i in range(0, len(pick), batch)] or None


def _classify(handle, model) -> tuple[list[G.Graph], dict]:
    from dlforge.data.transforms import TransformConfig
    facts = handle.config.facts
    tf = TransformConfig(**facts["transform"])
    c, h, w = facts["native_size"]
    loss = handle.config.task_options.get("loss", "cross-entropy")
    return G.classifier_graphs(model, tf, (c, h, w)), {
        "classes": handle.classes,
        "output": {"cross-entropy": "logits: softmax for probabilities, argmax for the class",
                   "bce": "one logit: sigmoid is the probability of the positive class (classes[1])",
                   "mse": "the regressed label"}.get(loss, loss),
        "preprocessing": {"input": f"uint8 (N, {c}, {h}, {w}), {'gray' if c == 1 else 'RGB'}, the dataset's own size: "
                                   f"resize other images to {h}x{w} first (bilinear)",
                          "inside_the_graph": [f"resize to {tf.img_size}x{tf.img_size} (bilinear, antialiased)",
                                               "divide by 255", f"subtract mean {list(tf.mean)}, divide by std "
                                               f"{list(tf.std)}", f"repeat gray to {tf.channels} channels"
                                               if c == 1 and tf.channels == 3 else "channels as they are"]}}


def _language_model(handle, model) -> tuple[list[G.Graph], dict]:
    tok = handle.tokenizer
    meta = {"tokenizer": {"file": "tokenizer.json", "kind": tok.kind, "vocab_size": tok.vocab_size,
                          "format": "char/word: {'kind', 'vocab'}: id i is vocab[i]; bpe: {'kind', 'hf'}: a Hugging "
                                    "Face tokenizers JSON (tokenizers.Tokenizer.from_str(json.dumps(hf)))"},
            "copy": ["tokenizer.json"], "files": ["tokenizer.json"], "recurrent": bool(model.recurrent)}
    if model.recurrent:
        meta["decoding"] = "feed the prompt's ids with zero states, then each new id with the states returned"
    else:
        attn = model.blocks[0].attn
        meta.update(block_size=model.block_size, layers=len(model.blocks), heads=attn.n_heads,
                    head_dim=attn.q.out_features // attn.n_heads,
                    decoding=("decoder_with_past: the prompt's ids (at most block_size, the last ones) with empty "
                              "past.* (batch, heads, 0, head_dim), then each new id with the present.* returned; "
                              "when past + 1 would exceed block_size, start again from the last block_size // 2 "
                              "ids with an empty past (what dlforge generate does)"))
    return G.lm_graphs(model), meta


def _seq2seq(handle, model) -> tuple[list[G.Graph], dict]:
    from dlforge.data import pairs as P
    from dlforge.recipes.seq2seq import PairDataConfig
    dc = PairDataConfig(**handle.config.data)
    files = ["src_tokenizer.json"] + (["tgt_tokenizer.json"] if dc.separate_vocab else [])
    return G.seq2seq_graphs(model), {
        "tokenizers": {"source": "src_tokenizer.json", "target": files[-1]}, "copy": files, "files": files,
        "special_ids": {"pad": P.PAD, "bos": P.BOS, "eos": P.EOS}, "max_len": model.max_len,
        "targets": list(dc.targets),
        "decoding": ("encoder once on the source ids (right-padded with pad); decoder from [bos] with empty past.*, "
                     "then each new id with the present.* returned; pad and bos are never outputs; stop at eos or "
                     "after max_len - 1 tokens")}


def _denoise(handle, model) -> tuple[list[G.Graph], dict]:
    from dlforge.recipes.denoise import make_sampler
    cfg = handle.config
    T = cfg.task_options["num_train_timesteps"]
    ddim = make_sampler(cfg, "ddim")
    own = model.text is not None
    meta = {"image": {"channels": model.in_channels, "size": model.img_size,
                      "output": "x_0 in [-1, 1]: uint8 = round((clip(x_0, -1, 1) + 1) * 127.5)"},
            "scheduler": {"num_train_timesteps": T, "beta_schedule": cfg.task_options["beta_schedule"],
                          "prediction": "epsilon", "clip_sample": True,
                          "alphas_cumprod": ddim.alphas_cumprod.tolist(),
                          "ddim_timesteps": ddim.timesteps.tolist(), "spacing": "trailing", "guidance": 3.0}}
    if own:
        tok = handle.artifacts
        meta["text"] = {"tokenizer": "captions.json", "format": "{'vocab', 'max_len'}: words = re.findall(r\"[a-z0-9]+(?:['-][a-z0-9]+)*\", "
                        "caption.lower()); ids = [1 (<s>)] + [vocab.index(w), or 2 (<unk>)], right-padded with 0 "
                        "to max_len", "max_len": tok.max_len,
                        "null_ids": tok.null(1)[0].tolist()}
        meta.update(copy=["captions.json"], files=["captions.json"])
    else:
        meta["text"] = {"external": cfg.data.get("text_encoder"), "states": "the sentence-transformers embedding as "
                        "one state (B, 1, D); the null caption is zeros"}
    return G.denoise_graphs(model), meta


def _speech(handle, model) -> tuple[list[G.Graph], dict]:
    from dlforge.data import features as Fe
    return G.speech_graphs(model), {
        "labels": {"file": "labels.json", "format": "a list of characters: output index i + 1 is labels[i], 0 is "
                   "the CTC blank"}, "copy": ["labels.json"], "files": ["labels.json"],
        "preprocessing": {"audio": "mono float32 at 16 kHz", "features": (
            f"log-mel: |STFT|^2 (n_fft {Fe.N_FFT}, hop {Fe.HOP}, Hann window, centred, zero padded) through a "
            f"Slaney mel filterbank of {model.n_mels} bands (librosa.filters.mel(sr=16000, n_fft={Fe.N_FFT}, "
            f"n_mels={model.n_mels})), log(x + 1e-6), then each band minus its mean over the clip, over its std + "
            f"1e-5; shape (frames, {model.n_mels})"), "subsampling": model.subsampling},
        "decoding": "greedy: the argmax label per frame, repeats merged, blanks (0) dropped"}


FAMILIES = {"classify": _classify, "language-model": _language_model, "seq2seq": _seq2seq, "denoise": _denoise,
            "speech": _speech}

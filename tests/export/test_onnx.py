"""ONNX export: every registered model's graphs under ONNX Runtime equal torch within 1e-4; the exported GPT and
encoder–decoder decode greedily to the same tokens as dlforge; the NumPy DDIM loop over the exported UNet draws
the images `Diffuser.generate` draws; bad runs, formats and output folders are one-line errors."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

for _mod in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_mod, reason=f"{_mod} is not installed (pip install 'dlforge[export]')")

import onnxruntime as ort  # noqa: E402

import dlforge  # noqa: E402
from tests.conftest import format1_run  # noqa: E402
from dlforge.cli import main  # noqa: E402
from dlforge.data.transforms import TransformConfig  # noqa: E402
from dlforge.errors import DlforgeError  # noqa: E402
from dlforge.export import graphs as G  # noqa: E402
from dlforge.export.onnx import write_graph  # noqa: E402
from dlforge.registry import create_model, entries  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
TINY = {"classify": dict(in_channels=3, img_size=8, num_classes=5),
        "language-model": dict(vocab_size=11, block_size=16),
        "seq2seq": dict(src_vocab_size=13, max_len=16, n_enc_layer=1, n_dec_layer=2, n_head=2, d_model=16,
                        dropout=0.0),
        "denoise": dict(vocab_size=9, img_size=8, ch=8, text_dim=16, text_layers=1, n_head=2, max_len=6),
        "speech": dict(vocab_size=7, n_mels=16, channels=4, d_model=16, n_layer=2, dropout=0.0)}
SMALLER = {"gpt": dict(n_layer=2, n_head=2, d_model=16), "rnn": dict(d_model=16, n_layer=2)}


def _wake(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Zero-initialised output layers (the UNet's) would make every comparison 0 = 0."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _tiny(entry) -> torch.nn.Module:
    kw = dict(TINY[entry.task])
    if entry.task == "language-model":
        kw.update(SMALLER["gpt" if entry.name.startswith("gpt") else "rnn"])
    return _wake(create_model(entry.name, **kw)).eval()


def _graphs(entry, model) -> list[G.Graph]:
    if entry.task == "classify":  # 12×12 gray images in: the graph resizes (antialiased), normalises, repeats
        return G.classifier_graphs(model, TransformConfig(img_size=8, mean=(0.3,), std=(0.4,)), (1, 12, 12))
    return {"language-model": G.lm_graphs, "seq2seq": G.seq2seq_graphs, "denoise": G.denoise_graphs,
            "speech": G.speech_graphs}[entry.task](model)


def _fresh(graph: G.Graph, args: tuple) -> tuple:
    """New random values shaped like args (ids within the vocabulary, masks with their first key real)."""
    out = []
    for a in args:
        if a.dtype == torch.bool:
            m = torch.rand(a.shape) < 0.7
            m[:, 0] = True
            out.append(m)
        elif a.is_floating_point():
            out.append(torch.randn(a.shape))
        else:
            hi = int(a.max()) + 1
            out.append(torch.randint(max(0, int(a.min())), max(hi, 2), a.shape, dtype=a.dtype))
    return tuple(out)


@pytest.mark.parametrize("entry", entries(), ids=lambda e: e.name)
def test_every_model_under_onnxruntime_equals_torch(entry, tmp_path):
    torch.manual_seed(0)
    model = _tiny(entry)
    for graph in _graphs(entry, model):
        info = write_graph(graph, tmp_path)
        assert info["check"]["max_abs_diff"] <= 1e-4
        session = ort.InferenceSession(str(tmp_path / info["file"]))
        assert [i.name for i in session.get_inputs()] == list(graph.inputs)
        # several batch sizes / lengths (the graph's own examples), each with fresh random values
        for args in [tuple(t for t, _ in graph.inputs.values()), *graph.examples]:
            args = _fresh(graph, args)
            with torch.no_grad():
                ref = graph.module(*args)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = session.run(None, {n: a.numpy() for n, a in zip(graph.inputs, args)})
            assert len(got) == len(ref) == len(graph.outputs)
            for r, g in zip(ref, got):
                np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=1e-4)


def test_classifier_graph_takes_raw_pixels_like_predict(tmp_path):
    run = _copy("classify", tmp_path)
    clf = dlforge.load(run)
    r = clf.export(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["classes"] == clf.classes and meta["graphs"]["classifier"]["inputs"][0] == \
        {"name": "images", "dtype": "uint8", "shape": ["batch", 1, 8, 8]}
    x = np.random.default_rng(0).integers(0, 256, (7, 1, 8, 8), dtype=np.uint8)
    logits = ort.InferenceSession(r["out"] + "/classifier.onnx").run(None, {"images": x})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    top = [p["top"][0] for p in clf.predict(list(x), top_k=1)]
    assert [t["index"] for t in top] == probs.argmax(1).tolist()
    np.testing.assert_allclose([t["probability"] for t in top], probs.max(1), atol=1e-5)


# ---------------------------------------------------------------- greedy decoding outside dlforge
def _copy(family: str, tmp_path: Path) -> Path:
    return format1_run(family, tmp_path / family)


def _ort_greedy_gpt(folder: Path, ids: list[int], n: int) -> list[int]:
    """model.json's decoding rule with decoder_with_past.onnx alone: the prompt with an empty past, then one
    id at a time; past the context, start again from the last block_size // 2 ids."""
    meta = json.loads((folder / "model.json").read_text())
    step = ort.InferenceSession(str(folder / "decoder_with_past.onnx"))
    bs, L, H, hd = meta["block_size"], meta["layers"], meta["heads"], meta["head_dim"]
    empty = {f"past.{i}.{kv}": np.zeros((1, H, 0, hd), np.float32) for i in range(L) for kv in ("key", "value")}

    def run(new: list[int], past: dict) -> tuple[np.ndarray, dict]:
        logits, *present = step.run(None, {"ids": np.array([new], np.int64), **past})
        return logits[0, -1], dict(zip(empty, present))
    logits, past = run(ids[-bs:], empty)
    out = []
    for _ in range(n):
        nxt = int(logits.argmax())
        out.append(nxt)
        ids = ids + [nxt]
        if past["past.0.key"].shape[2] + 1 > bs:
            logits, past = run(ids[-max(1, bs // 2):], empty)
        else:
            logits, past = run([nxt], past)
    return out


def test_the_cached_gpt_graph_generates_what_dlforge_generates(tmp_path):
    lm = dlforge.load(_copy("lm", tmp_path))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the fixture's barely trained model repeats one token: random weights make text vary
        for p in lm.model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    folder = Path(lm.export(tmp_path / "out")["out"])
    assert (folder / "tokenizer.json").read_text() == (lm.path / "tokenizer.json").read_text()
    prompt = "the "
    n = 40  # past block_size (16): the restart from the last 8 ids is exercised twice
    expected = lm.generate(prompt, max_new_tokens=n, temperature=0)
    got = _ort_greedy_gpt(folder, lm.tokenizer.encode(prompt), n)
    assert prompt + lm.tokenizer.decode(got) == expected
    assert len(set(got)) > 3


def test_the_exported_encoder_decoder_translates_like_greedy(tmp_path):
    from dlforge.data import pairs as P
    from dlforge.recipes.seq2seq import greedy
    tr = dlforge.load(_copy("seq2seq", tmp_path))
    folder = Path(tr.export(tmp_path / "out")["out"])
    meta = json.loads((folder / "model.json").read_text())
    enc, dec = (ort.InferenceSession(str(folder / f)) for f in ("encoder.onnx", "decoder.onnx"))
    src_tok = tr.artifacts[0]
    to = meta["targets"][0] if meta["targets"] else None
    src = P.pad([P.source_ids(src_tok, [t], [to or ""])[0] for t in ("12", "407", "99831")])
    expected = greedy(tr.model, src)
    mask, *cross = enc.run(None, {"src": src.numpy()})
    names = [o.name for o in enc.get_outputs()][1:]
    L = len(names) // 2
    H, hd = cross[0].shape[1], cross[0].shape[3]
    B = len(src)
    past = {f"past.{i}.{kv}": np.zeros((B, H, 0, hd), np.float32) for i in range(L) for kv in ("key", "value")}
    tokens, done = np.full((B, 1), meta["special_ids"]["bos"]), np.zeros(B, bool)
    for _ in range(meta["max_len"] - 1):
        logits, *present = dec.run(None, {"tgt": tokens[:, -1:], "src_mask": mask, **dict(zip(names, cross)), **past})
        past = dict(zip(past, present))
        logits = logits[:, -1]
        logits[:, [meta["special_ids"]["pad"], meta["special_ids"]["bos"]]] = -np.inf
        nxt = np.where(done, meta["special_ids"]["pad"], logits.argmax(-1))
        tokens = np.concatenate([tokens, nxt[:, None]], 1)
        done |= nxt == meta["special_ids"]["eos"]
        if done.all():
            break
    eos = meta["special_ids"]["eos"]
    got = [[i for i in (r[:r.index(eos)] if eos in r else r) if i != 0] for r in tokens[:, 1:].tolist()]
    assert got == expected


def test_the_recurrent_graph_carries_its_state_token_by_token(tmp_path):
    model = _tiny(next(e for e in entries() if e.name == "lstm"))
    (graph,) = G.lm_graphs(model)
    s = ort.InferenceSession(str(tmp_path / write_graph(graph, tmp_path)["file"]))
    ids = np.random.default_rng(0).integers(0, 11, (2, 9))
    zeros = {n: np.zeros(a.shape[:1] + (2,) + a.shape[2:], np.float32) for n, (a, _) in list(graph.inputs.items())[1:]}
    whole = s.run(None, {"ids": ids, **zeros})[0]
    state, steps = zeros, []
    for t in range(ids.shape[1]):
        logits, h, c = s.run(None, {"ids": ids[:, t:t + 1], **state})
        state, steps = {"h": h, "c": c}, steps + [logits]
    np.testing.assert_allclose(np.concatenate(steps, 1), whole, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(whole, model(torch.from_numpy(ids))[0].numpy(), atol=1e-4)


# ---------------------------------------------------------------- diffusion: the README's NumPy loop
def _example():
    spec = importlib.util.spec_from_file_location("onnx_diffusion", ROOT / "examples" / "onnx_diffusion.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_numpy_ddim_loop_draws_the_images_dlforge_draws(tmp_path):
    """Tolerance: ONNX Runtime's ε differs from torch's by ~1e-7 per step (fp32 kernels); deterministic DDIM
    carries that through its 50 steps to ~1e-6 in x_0 (measured: 9.5e-7), far under a uint8 level (1/127.5
    of [-1, 1]). So the images are equal except pixels within ~1e-6 of a rounding boundary, which may move by
    one level: at most one level anywhere, and fewer than 1 pixel in 100 differing at all (measured: none).
    A briefly trained unet-tiny (150 steps, ~15 s): an untrained one predicts ε ≈ 0, its x̂_0 = x_t / √ᾱ_t is
    clipped at once and every image saturates at 0 / 255, which would hide any difference."""
    d = dlforge.train("unet-tiny", data="digits", out=tmp_path / "run", img_size=8, timesteps=100, max_steps=150,
                      batch_size=32, lr=3e-3, ema_decay=0.9, eval_every=1000, progress=False)
    folder = d.export(tmp_path / "out")["out"]
    prompts = ["a handwritten digit three", "a handwritten digit seven"] * 2
    expected, _ = d.generate(prompts, seed=5)
    noise = torch.randn(expected.shape, generator=torch.Generator().manual_seed(5)).numpy()  # P.sample's x_T
    got = _example().sample(folder, prompts, noise, guidance=3.0)
    diff = np.abs(got.astype(int) - expected.numpy().astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert len(np.unique(got)) > 50  # grey levels, not saturated 0 / 255
    other = _example().sample(folder, prompts[1:2] + prompts[1:], noise, guidance=3.0)  # the first caption changed
    assert (other[0] != got[0]).any() and (other[1:] == got[1:]).all()  # the caption matters, row by row


def test_the_readme_shows_the_tested_loop():
    body = (ROOT / "examples" / "onnx_diffusion.py").read_text()
    loop = body[body.index("def sample("):body.index("\n\n\nif __name__")]
    docs = [p for p in (ROOT / "README-export.md", ROOT / "README.md") if p.is_file() and "Export to ONNX" in p.read_text()]
    if not docs:
        pytest.skip("no README section 'Export to ONNX'")
    assert loop in docs[0].read_text(), f"{docs[0].name}: the diffusion loop differs from examples/onnx_diffusion.py"


# ---------------------------------------------------------------- bad input
def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    run = _copy("classify", tmp_path)
    cases = [([str(tmp_path / "nope")], "not a dlforge run directory"),
             ([str(run), "--format", "tflite"], "--format: expected one of onnx; got 'tflite'")]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cases.append(([str(run), "--out", str(tmp_path / "busy")], "holds other files (notes.txt)"))
    (tmp_path / "a-file").write_text("x")
    cases.append(([str(run), "--out", str(tmp_path / "a-file")], "is a file, not a folder"))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(run, incomplete)
    shutil.rmtree(incomplete / "checkpoints")
    cases.append(([str(incomplete)], "no checkpoint yet"))
    for argv, message in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_an_export_replaces_a_previous_one_and_the_cli_says_what_it_wrote(tmp_path, capsys):
    run = _copy("classify", tmp_path)
    assert main(["export", str(run), "--int8"]) == 0
    out = capsys.readouterr().out
    assert "classifier.onnx + classifier.int8.onnx" in out and "model.json" in out
    int8 = json.loads((run / "onnx" / "model.json").read_text())["graphs"]["classifier"]["int8"]
    assert int8["method"].startswith("static, calibrated on 512 training images") and int8["max_abs_diff"] < 0.5
    assert main(["export", str(run)]) == 0  # the same folder again: the old export is replaced
    assert sorted(p.name for p in (run / "onnx").iterdir()) == ["classifier.onnx", "model.json"]
    with pytest.raises(DlforgeError, match="--format"):
        dlforge.load(run).export(format="torchscript")


def test_a_previous_exports_list_is_not_trusted_and_a_stopped_export_keeps_the_old_one(tmp_path, capsys, monkeypatch):
    """Before: check_out unlinked every name a leftover model.json listed ("../x" deleted a file beside the folder,
    a folder's name was an IsADirectoryError traceback), and an export stopped half-way had deleted the previous
    one first, leaving files its retry refused."""
    from dlforge.export import onnx as X
    run = _copy("classify", tmp_path)
    beside = tmp_path / "precious.txt"
    beside.write_text("mine")
    trav = tmp_path / "exp"
    trav.mkdir()
    (trav / "model.json").write_text(json.dumps({"exported_by": "dlforge", "files": ["model.json", "../precious.txt"]}))
    assert main(["export", str(run), "--out", str(trav)]) == 0
    assert beside.read_text() == "mine" and (trav / "classifier.onnx").is_file()
    dirs = tmp_path / "dirs"
    (dirs / "sub").mkdir(parents=True)
    (dirs / "model.json").write_text(json.dumps({"exported_by": "dlforge", "files": ["model.json", "sub"]}))
    assert main(["export", str(run), "--out", str(dirs)]) == 2
    err = capsys.readouterr().err
    assert "holds other files (sub)" in err and err.count("\n") == 1 and (dirs / "sub").is_dir(), err
    assert main(["export", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in (run / "onnx").iterdir()}

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(X, "write_graph", stop)
    with pytest.raises(KeyboardInterrupt):
        X.export(dlforge.load(run))
    assert {p.name: p.read_bytes() for p in (run / "onnx").iterdir()} == before  # the old export, whole
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".onnx")) == []  # no half-written folder
    monkeypatch.undo()
    assert main(["export", str(run), "--int8"]) == 0  # and the retry replaces it
    assert sorted(p.name for p in (run / "onnx").iterdir()) == ["classifier.int8.onnx", "classifier.onnx", "model.json"]

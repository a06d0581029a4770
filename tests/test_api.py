"""The Python API (dlforge.train / dlforge.load) for every family, on data in memory; run directories of
the previous release (format 1); callbacks; early stopping; gradient accumulation; flags that do not apply."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dlforge
from dlforge.cli import main
from tests.conftest import format1_run
from dlforge.diffusion.schedulers import DDIMScheduler, DDPMScheduler
from dlforge.train.callbacks import Callback
from dlforge.train.checkpoint import load_checkpoint, read_meta

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False}


def _losses(run: Path, key: str = "loss") -> list[float]:
    return [json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines() if key in json.loads(x)]


def _digits(n: int = 600):
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images[:n] / 16.0).astype(np.float32), d.target[:n]  # floats in [0, 1], (N, 8, 8)


# ---------------------------------------------------------------- every family from Python
def test_classifier_on_arrays_in_memory(tmp_path, capsys):
    x, y = _digits()
    run = dlforge.train("mlp", data=(x, y), out=tmp_path / "clf", img_size=8, hidden=(32,), epochs=4, lr=3e-3, **QUIET)
    assert isinstance(run, dlforge.recipes.classify.Classifier)
    assert run.report["accuracy"] > 0.8 and run.report["test_images"] == 120  # a fixed 20% held out
    assert (tmp_path / "clf" / "data.safetensors").is_file()  # the data lives in the run
    losses = _losses(tmp_path / "clf")
    assert losses[-1] < losses[0]
    clf = dlforge.load(tmp_path / "clf")
    one = clf.predict(x[0], top_k=2)                         # one array
    batch = clf.predict(torch.from_numpy(x[:5]), top_k=1)    # a batch as a tensor
    assert len(one) == 1 and len(one[0]["top"]) == 2 and len(batch) == 5
    assert [r["top"] for r in batch] == [r["top"] for r in clf.predict(list(x[:5]), top_k=1)]  # tensor = list
    assert sum(r["top"][0]["index"] == t for r, t in zip(clf.predict(list(x[:50])), y[:50])) >= 40
    again = clf.evaluate()  # evaluation rebuilds the data from the run directory alone
    assert again["accuracy"] == pytest.approx(run.report["accuracy"])


def test_language_model_on_a_string(tmp_path):
    text = "the cat sat on the mat.\nthe dog ran to the park.\n" * 60
    dlforge.train("gpt-tiny", data=text, out=tmp_path / "lm", block_size=16, batch_size=16, max_steps=60,
                  lr=3e-3, eval_every=20, eval_tokens=0, **QUIET)
    assert (tmp_path / "lm" / "corpus.txt").read_text() == text
    val = _losses(tmp_path / "lm", "val_loss")
    assert val[-1] < val[0]
    lm = dlforge.load(tmp_path / "lm")
    assert lm.generate("the ", max_new_tokens=12, temperature=0).startswith("the ")
    # before: below ~1e-37 logits / temperature overflowed, the softmax was NaN, and every token id 0
    assert lm.generate("the ", max_new_tokens=12, temperature=1e-40) == lm.generate("the ", 12, temperature=0)
    pieces = list(lm.stream("the ", max_new_tokens=8, temperature=0))
    assert "".join(pieces) == lm.generate("the ", max_new_tokens=8, temperature=0)[4:] and len(pieces) == 8
    top = lm.next_tokens("the cat sat on the", top_k=3)
    for seed in (-1, 2 ** 63):  # before: -1 sampled as 2^64 - 1, 2^63 was torch's OverflowError
        with pytest.raises(dlforge.DlforgeError, match=r"^--seed: expected 0 \.\. 2\^63 - 1, got"):
            lm.generate("the ", max_new_tokens=2, seed=seed)
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"]


def test_translator_on_pairs(tmp_path):
    from num2words import num2words
    pairs = [(str(n), num2words(n)) for n in range(300)]
    run = dlforge.train("transformer-tiny", data=pairs, out=tmp_path / "tr", tokenizer="char", width=32, heads=2,
                        layers=1, batch_size=32, max_steps=40, eval_every=20, lr=3e-3, **QUIET)
    assert "exact_match" in run.report and (tmp_path / "tr" / "pairs.tsv").is_file()
    val = _losses(tmp_path / "tr", "val_loss")
    assert val[-1] < val[0]
    out = dlforge.load(tmp_path / "tr").translate(["12", "7"])
    assert [o["source"] for o in out] == ["12", "7"] and all(isinstance(o["translation"], str) for o in out)


def test_diffuser_on_images_with_captions(tmp_path):
    x, y = _digits(200)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    pairs = [(img, f"a handwritten {names[t]}") for img, t in zip(x, y)]
    run = dlforge.train("unet-tiny", data=pairs, out=tmp_path / "dif", img_size=8, timesteps=50, batch_size=32,
                        max_steps=30, eval_every=10, lr=3e-3, **QUIET)
    assert (tmp_path / "dif" / "captions.csv").is_file() and run.report["best_val_loss"] is not None
    d = dlforge.load(tmp_path / "dif")
    imgs = d.sample(["a handwritten three"], n=2, steps=5, seed=1)
    assert len(imgs) == 2 and imgs[0].size == (8, 8)
    again = d.sample(["a handwritten three"], n=2, steps=5, seed=1)
    assert np.array_equal(np.asarray(imgs[0]), np.asarray(again[0]))  # seeded
    for seed in (-1, 2 ** 63, "a"):  # before: -1 sampled as 2^64 - 1, 2^63 was torch's OverflowError
        with pytest.raises(dlforge.DlforgeError, match=r"^--seed: expected 0 \.\. 2\^63 - 1, got"):
            d.sample(["a handwritten three"], n=1, steps=2, seed=seed)
    for kwargs, says in (({"n": 1.5}, "--n: expected 1..4096 images per prompt, got 1.5"),  # each was a TypeError
                         ({"steps": "5"}, "--steps: expected an integer, got '5'"),
                         ({"guidance": "x"}, "--guidance: expected a number, got 'x'")):
        with pytest.raises(dlforge.DlforgeError) as e:
            d.sample(["a handwritten three"], **kwargs)
        assert str(e.value) == says
    with pytest.raises(dlforge.DlforgeError, match="^--prompt: expected text, got NoneType$"):
        d.sample([None])
    imgs, traj = d.sample("a handwritten one", n=1, steps=5, trajectory=True)
    assert len(traj) >= 2 and traj[0][0] > traj[-1][0]  # noise first, then lower t


def test_bad_data_in_memory_is_one_line():
    with pytest.raises(dlforge.DlforgeError, match="labels: expected 3 integer class indices"):
        dlforge.train("mlp", data=(np.zeros((3, 8, 8), np.uint8), [0.5, 1, 2]), out="/nonexistent/x", **QUIET)
    with pytest.raises(dlforge.DlforgeError, match="float images must lie in"):
        dlforge.train("mlp", data=(np.full((4, 8, 8), 3.0), [0, 1, 0, 1]), out="/nonexistent/x", **QUIET)
    # before: sklearn's ValueError, and NaN images trained (and predicted) as black ones
    with pytest.raises(dlforge.DlforgeError, match="^images: expected two images or more, got 0$"):
        dlforge.train("mlp", data=(np.zeros((0, 8, 8)), np.zeros(0, int)), out="/nonexistent/x", **QUIET)
    with pytest.raises(dlforge.DlforgeError, match=r"^images: float images hold NaN; expected values in \[0, 1\]$"):
        dlforge.train("mlp", data=(np.full((4, 8, 8), np.nan), [0, 1, 0, 1]), out="/nonexistent/x", **QUIET)
    with pytest.raises(dlforge.DlforgeError, match="^labels: 'bird' not among the classes \\('cat', 'dog'\\)$"):
        dlforge.train("mlp", data={"images": np.zeros((3, 8, 8), np.uint8), "labels": ["cat", "dog", "bird"],
                                   "classes": ["cat", "dog"]}, out="/nonexistent/x", **QUIET)
    # before: trained to 100% on the one class, and reported it
    with pytest.raises(dlforge.DlforgeError, match="^labels: every training image is of class 'cat'; a classifier "
                                                   "needs images of two classes or more$"):
        dlforge.train("mlp", data={"images": np.zeros((6, 8, 8), np.uint8), "labels": ["cat"] * 6,
                                   "classes": ["cat", "dog"]}, out="/nonexistent/x", **QUIET)
    assert not Path("/nonexistent").exists()  # nothing made for a run that never started


@pytest.mark.parametrize("option, value, says", [
    ("max_steps", "ten", "--max-steps: expected an integer, got 'ten'"), ("seed", 1.5, "--seed: expected an integer, "
     "got 1.5"), ("lr", "1e-3", "--lr: expected a number, got '1e-3'"), ("progress", "no", "--progress: expected "
     "True or False, got 'no'"), ("epochs", True, "--epochs: expected an integer, got True")])
def test_an_option_of_the_wrong_type_names_itself(option, value, says, tmp_path):
    # before: a TypeError or RuntimeError from inside torch or the trainer
    with pytest.raises(dlforge.DlforgeError) as e:
        dlforge.train("mlp", data=_digits(40), img_size=8, out=tmp_path / "r", **{**QUIET, option: value})
    assert str(e.value) == says and not (tmp_path / "r").exists()


def test_labels_by_name_and_numpy_numbers(tmp_path):
    x, y = _digits(200)
    names = np.array(["even", "odd"])[y % 2]
    run = dlforge.train("mlp", data=(x, names), img_size=8, out=tmp_path / "r", max_steps=np.int64(30),
                        lr=np.float32(3e-3), **QUIET)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["facts"]["classes"] == ["even", "odd"] and config["train"]["max_steps"] == 30
    assert run.predict(x[:1])[0]["top"][0]["class"] in ("even", "odd")


# ---------------------------------------------------------------- runs of the previous release
@pytest.mark.parametrize("family", ["classify", "lm", "seq2seq", "denoise"])
def test_format_1_run_directories_load_evaluate_and_resume(family, tmp_path):
    run = format1_run(family, tmp_path / family)
    h = dlforge.load(run)
    assert h.config.format == 2 and h.config.task == {"lm": "language-model"}.get(family, family)
    if family == "classify":
        assert h.predict(np.zeros((8, 8), np.uint8))[0]["top"]
        assert 0 <= h.evaluate()["accuracy"] <= 1
    elif family == "lm":
        assert h.generate("the", max_new_tokens=5, temperature=0).startswith("the")
    elif family == "seq2seq":
        assert isinstance(h.translate("12", to="en")[0]["translation"], str)
    else:
        assert len(h.sample("a handwritten 3", n=1, steps=3)) == 1
    step = read_meta(run / "checkpoints" / "last.safetensors")["step"]
    resumed = dlforge.train(h.config.model, out=run, resume=True, max_steps=step + 2, **QUIET)
    assert read_meta(run / "checkpoints" / "last.safetensors")["step"] == step + 2
    assert json.loads((run / "config.json").read_text())["format"] == 2  # migrated once, on resume
    assert resumed.config.model_kwargs == h.config.model_kwargs


# ---------------------------------------------------------------- the trainer's contract
class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_start(self, trainer):
        self.events.append(("start", trainer.step))

    def on_step_end(self, trainer):
        self.events.append(("step", trainer.step))

    def on_evaluate(self, trainer, record):
        self.events.append(("evaluate", record["step"], "val_loss" in record))

    def on_epoch_end(self, trainer, record):
        self.events.append(("epoch", record["epoch"]))

    def on_end(self, trainer):
        self.events.append(("end", trainer.step))


def test_callbacks_receive_every_event_in_order(tmp_path):
    x, y = _digits(200)  # 160 train -> 144 after validation: 3 batches of 48
    rec = Recorder()
    dlforge.train("mlp", data=(x, y), out=tmp_path / "r", img_size=8, hidden=(8,), batch_size=48, epochs=2,
                  eval_every=2, callbacks=[rec], **QUIET)
    assert rec.events == [("start", 0), ("step", 1), ("step", 2), ("evaluate", 2, True), ("step", 3), ("epoch", 1),
                          ("step", 4), ("evaluate", 4, True), ("step", 5), ("step", 6), ("evaluate", 6, True),
                          ("epoch", 2), ("end", 6)]


def test_a_stop_requested_in_on_start_keeps_the_checkpoint_it_names(tmp_path, capsys):
    """Before: "checkpoint …/last.safetensors" was said but none written, and dlforge.train then raised 'no
    checkpoint yet'."""
    class NotToday(Callback):
        def on_start(self, trainer):
            trainer.request_stop("not today")
    x, y = _digits(200)
    run = dlforge.train("mlp", data=(x, y), out=tmp_path / "r", img_size=8, hidden=(8,), max_steps=5,
                        callbacks=[NotToday()], **QUIET)
    assert read_meta(tmp_path / "r" / "checkpoints" / "last.safetensors")["step"] == 0 and run.report["accuracy"] >= 0
    assert f"dlforge: not today at step 0; checkpoint {tmp_path / 'r' / 'checkpoints' / 'last.safetensors'}" in \
        capsys.readouterr().err
    assert dlforge.train("mlp", out=tmp_path / "r", resume=True, max_steps=5, **QUIET).report  # and it goes on


def test_early_stop_after_n_evaluations_without_progress(tmp_path, capsys):
    x, y = _digits(300)
    # a learning rate too small to move any weight: the validation loss never improves after the first one
    dlforge.train("mlp", data=(x, y), out=tmp_path / "r", img_size=8, hidden=(8,), batch_size=16, lr=1e-30,
                  eval_every=2, early_stop=2, epochs=50, **QUIET)
    assert read_meta(tmp_path / "r" / "checkpoints" / "last.safetensors")["step"] == 6  # evaluations 2 (best), 4, 6
    assert "early stop: val_loss has not improved for 2 evaluations" in capsys.readouterr().err


def test_grad_accum_equals_the_whole_batch(tmp_path):
    x, y = _digits(400)
    common = dict(data=(x, y), img_size=8, hidden=(32,), batch_size=64, max_steps=8, lr=1e-2, **QUIET)
    dlforge.train("mlp", out=tmp_path / "one", **common)
    dlforge.train("mlp", out=tmp_path / "four", grad_accum=4, **common)
    a, _ = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "four" / "checkpoints" / "last.safetensors")
    weights = [k for k in a if k.startswith("model.")]
    assert weights and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in weights)


def test_grad_accum_is_refused_where_micro_batches_would_differ(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh " * 400)
    assert main(["train", "lstm-small", "--data-file", str(text), "--grad-accum", "2", "--max-steps", "2",
                 "--batch-size", "4", "--block-size", "16",
                 "--no-progress", "--out", str(tmp_path / "r")]) == 2
    assert "--grad-accum 2: a language-model batch cannot be split" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["train", "cnn", "--layers", "4"], "--layers: does not apply to cnn"),
    (["train", "gpt-tiny", "--loss", "bce"], "--loss: does not apply to gpt-tiny"),
    (["train", "lstm-small", "--heads", "2"], "--heads: does not apply to lstm-small"),
    (["train", "unet-tiny", "--tokenizer", "word"], "--tokenizer: does not apply to unet-tiny"),
    (["train", "transformer-tiny", "--img-size", "8"], "--img-size: does not apply to transformer-tiny"),
])
def test_a_flag_that_does_not_apply_names_itself(argv, flag, tmp_path, capsys, reliability):
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dlforge: error: {flag}") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()  # refused before anything is written
    reliability.record("a flag that does not apply to the model (`train cnn --layers 4`, `train gpt --loss bce`)",
                       "exit 2, one line naming the flag and the model's own options")


def test_resume_refuses_to_change_the_model_or_data(tmp_path, capsys):
    x, y = _digits(200)
    dlforge.train("mlp", data=(x, y), out=tmp_path / "r", img_size=8, hidden=(8,), max_steps=2, **QUIET)
    with pytest.raises(dlforge.DlforgeError, match="made with hidden = \\[8\\], not \\(16,\\)"):
        dlforge.train("mlp", out=tmp_path / "r", resume=True, hidden=(16,), **QUIET)
    dlforge.train("mlp", out=tmp_path / "r", resume=True, hidden=(8,), max_steps=3, **QUIET)  # the same: fine


def test_resume_compares_a_model_option_left_to_its_default_with_that_default(tmp_path):
    """gpt-tiny's own width is 64 and its config keeps no d_model: `--resume --width 64` was refused as "made with
    d_model = None, not 64", and every refusal named the model's keyword (d_model), not the option (width)."""
    text = "the cat sat on the mat.\n" * 40
    dlforge.train("gpt-tiny", data=text, out=tmp_path / "g", block_size=16, max_steps=2, eval_every=2, **QUIET)
    dlforge.train("gpt-tiny", out=tmp_path / "g", resume=True, width=64, heads=2, layers=2, dropout=0.0, max_steps=3,
                  **QUIET)  # its own sizes, given: the same model, trained on
    assert [json.loads(x)["step"] for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()][-1] == 3
    for option, value in (("width", 128), ("heads", 4), ("layers", 3), ("dropout", 0.1)):
        with pytest.raises(dlforge.DlforgeError, match=f"^--resume .*: this run was made with gpt-tiny's default "
                                                       f"{option}, not {value}; a resumed run keeps its data, model"):
            dlforge.train("gpt-tiny", out=tmp_path / "g", resume=True, max_steps=4, **{option: value}, **QUIET)
    with pytest.raises(dlforge.DlforgeError, match="made with block_size = 16, not 32"):
        dlforge.train("gpt-tiny", out=tmp_path / "g", resume=True, block_size=32, max_steps=4, **QUIET)

def test_schedulers_share_one_step_signature():
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for s in (DDPMScheduler(100), DDIMScheduler(100)):
        s.set_timesteps(10)
        t = int(s.timesteps[0])
        assert s.step(eps, t, x, generator=torch.Generator().manual_seed(0), eta=None).shape == x.shape
    a = DDIMScheduler(100)
    b = DDPMScheduler(100)
    a.set_timesteps(10)
    b.set_timesteps(10)
    t = int(a.timesteps[0])
    same = [s.step(eps, t, x, generator=torch.Generator().manual_seed(5), eta=1.0) for s in (a, b)]
    assert torch.allclose(*same, atol=1e-6)  # DDPM is DDIM's η = 1
    with pytest.raises(dlforge.DlforgeError, match="--eta 0.5: the ddpm sampler is η = 1"):
        b.step(eps, t, x, eta=0.5)


def test_load_names_a_checkpoint_it_does_not_have(tmp_path):
    dlforge.train("mlp", data=_digits(40), img_size=8, out=tmp_path / "r", max_steps=2, **QUIET)
    assert dlforge.load(tmp_path / "r", which="last").checkpoint.name == "last.safetensors"
    with pytest.raises(dlforge.DlforgeError, match="^which: expected 'best' or 'last', got 'foo'$"):
        dlforge.load(tmp_path / "r", which="foo")  # before: the last checkpoint, without a word


@pytest.mark.parametrize("data", ["", [], "  \n"])
def test_empty_text_in_memory_is_named(data, tmp_path):
    with pytest.raises(dlforge.DlforgeError, match="^data: the text is empty; give a corpus name, a text file or "
                                                   "folder, or the text itself$"):
        dlforge.train("gpt-tiny", data=data, out=tmp_path / "r", **QUIET)
    with pytest.raises(dlforge.DlforgeError, match="^data: a list of lines of text, but item 1 is int$"):
        dlforge.train("gpt-tiny", data=["the cat", 5], out=tmp_path / "r", **QUIET)  # was "…got list"



def test_block_size_none_is_the_models_own(tmp_path):
    # before: a TypeError (None + 1) while splitting the text; None is "the default", as leaving it out is
    text = "the cat sat on the mat.\n" * 40
    dlforge.train("gpt-tiny", data=text, out=tmp_path / "g", block_size=None, max_steps=1, eval_every=1, **QUIET)
    assert json.loads((tmp_path / "g" / "config.json").read_text())["data"]["block_size"] == 64  # gpt-tiny's


@pytest.mark.parametrize("model, option, value, says", [
    ("lstm", "dropout", -0.5, "--dropout: expected a probability in [0, 1), got -0.5"),
    ("gpt-tiny", "dropout", 1.5, "--dropout: expected a probability in [0, 1), got 1.5"),
    ("gpt-tiny", "width", 0, "--width: expected an integer, at least 1, got 0"),
    ("unet-tiny", "layers", -1, "--layers: expected an integer, at least 1, got -1"),  # trained without a word
    ("unet-tiny", "width", 3, "--width 3: the unet's time embedding needs an even width")])
def test_a_model_option_out_of_range_names_itself(model, option, value, says, tmp_path):
    # before: a ValueError or RuntimeError traceback from torch
    data = "the cat sat on the mat. " * 40 if model != "unet-tiny" else "digits"
    with pytest.raises(dlforge.DlforgeError) as e:
        dlforge.train(model, data=data, out=tmp_path / "r", max_steps=1, **{**QUIET, option: value})
    assert str(e.value) == says


@pytest.mark.parametrize("kwargs, says", [
    ({"callbacks": [object()]}, "callbacks[0]: expected a Callback (subclass dlforge.train.callbacks.Callback), got "
                                "object, which has no on_start()"),
    ({"callbacks": "x"}, "callbacks: expected a list of Callback objects (dlforge.train.callbacks), got str"),
    ({"callbacks": [Callback]}, "callbacks[0]: Callback is a class; pass an instance, Callback()"),  # a TypeError
    ({"out": 5}, "out: expected a run directory (str or Path), got 5"),
    ({"hidden": [-1]}, "--hidden: expected positive integers such as [256, 128], got [-1]"),
    ({"hidden": [0]}, "--hidden: expected positive integers such as [256, 128], got [0]"),
    ({"eval_batch_size": 0}, "--eval-batch-size: expected at least 1, got 0"),
    ({"img_size": "8"}, "--img-size: expected an integer, got '8'"),
    ({"val_fraction": "0.2"}, "--val-fraction: expected a number, got '0.2'"),
    ({"data": (np.zeros((4, 8, 8), np.uint8), None)}, "labels: missing; give 4 integer class indices (or class names)"),
    ({"data": {"images": np.zeros((4, 8, 8), np.uint8), "labels": [0, 1, 0, 1], "test_images": np.zeros((2, 8, 8))}},
     "test_labels: missing; give 2 integer class indices (or class names)"),
    ({"resume": "yes"}, "resume: expected True or False, got 'yes'")])
def test_python_arguments_of_the_wrong_kind_are_named_before_anything_is_written(kwargs, says, tmp_path, monkeypatch):
    """Before: AttributeError at the first step (leaving a run with no checkpoint), pathlib's and torch's
    TypeError or RuntimeError, a layer of 0 units trained, and eval_batch_size=0 trained and then crashed."""
    monkeypatch.chdir(tmp_path)
    options = {"data": "digits", "out": "r", "img_size": 8, "max_steps": 1, **QUIET, **kwargs}
    with pytest.raises(dlforge.DlforgeError) as e:
        dlforge.train("mlp", **options)
    assert str(e.value) == says and not list(tmp_path.iterdir())

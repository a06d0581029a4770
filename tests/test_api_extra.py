"""The Python API as a user of the examples meets it: regressions found while writing examples/."""
from __future__ import annotations

import numpy as np
import pytest

import dlforge


@pytest.fixture
def gray_arrays():
    """60 gray 8x8 images (N, H, W) of 3 classes: class k lights up row 2k."""
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = (rng.random((60, 8, 8)) * 40).astype(np.uint8)
    x[np.arange(60), 2 * y, :] = 255
    return x, y


def test_predict_takes_a_slice_of_the_training_arrays(tmp_path, gray_arrays, one_thread):
    """A model trained on (N, H, W) arrays predicts (N, H, W) arrays, one result per image. Before, such a
    slice was read as one N-channel image: 3 images gave 1 result, 2 or 5 an error."""
    x, y = gray_arrays
    run = dlforge.train("mlp", data=(x, y), out=tmp_path / "run", img_size=8, hidden=[16], max_steps=2,
                        progress=False)
    clf = dlforge.load(run.path)
    for n in (1, 2, 3, 5):
        assert len(clf.predict(x[:n])) == n
    one_by_one = [clf.predict(img)[0]["top"] for img in x[:3]]
    assert [r["top"] for r in clf.predict(x[:3])] == one_by_one
    assert [r["top"] for r in clf.predict(list(x[:3]))] == one_by_one


def test_language_model_takes_a_long_text_in_memory(tmp_path, monkeypatch, one_thread):
    """Text in memory longer than a file name may be (255 bytes) trains, and its default run directory is
    runs/MODEL-memory. Before: OSError 'File name too long'; a shorter text named the directory after itself."""
    monkeypatch.chdir(tmp_path)
    text = "the cat sat on the mat.\nthe dog sat on the log.\n" * 20   # 960 characters
    run = dlforge.train("gpt-tiny", data=text, block_size=8, width=16, layers=1, heads=1, max_steps=2,
                        batch_size=4, progress=False)
    assert run.path.resolve() == tmp_path / "runs" / "gpt-tiny-memory"
    assert (run.path / "corpus.txt").read_text(encoding="utf-8") == text
    short = dlforge.train("gpt-tiny", data="ab. cd\n" * 12, block_size=4, width=16, layers=1, heads=1,
                          max_steps=1, batch_size=2, progress=False)
    assert short.path.resolve() == tmp_path / "runs" / "gpt-tiny-memory-2"


def test_resume_takes_the_same_data_again(tmp_path, gray_arrays, one_thread):
    """Re-running a script with resume=True and the data it first gave (text or arrays in memory, a file)
    continues the run; other data is refused in one line. Before, only a dataset name passed: the same text
    in memory was refused with the whole text in the message."""
    text = "the cat sat on the mat.\nthe dog sat on the log.\n" * 20
    kw = dict(block_size=8, width=16, layers=1, heads=1, batch_size=4, progress=False)
    dlforge.train("gpt-tiny", data=text, out=tmp_path / "lm", max_steps=1, **kw)
    assert dlforge.train("gpt-tiny", data=text, out=tmp_path / "lm", resume=True, max_steps=2, **kw).report
    with pytest.raises(dlforge.DlforgeError, match=r"^--resume .*: this run was made with data = .*, not other data;"):
        dlforge.train("gpt-tiny", data=text + "a bird", out=tmp_path / "lm", resume=True, max_steps=3, **kw)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    dlforge.train("gpt-tiny", data=str(corpus), out=tmp_path / "lm2", max_steps=1, **kw)
    assert dlforge.train("gpt-tiny", data=str(corpus), out=tmp_path / "lm2", resume=True, max_steps=2, **kw).report
    x, y = gray_arrays
    ck = dict(img_size=8, hidden=[8], progress=False)
    dlforge.train("mlp", data=(x, y), out=tmp_path / "clf", max_steps=1, **ck)
    assert dlforge.train("mlp", data=(x, y), out=tmp_path / "clf", resume=True, max_steps=2, **ck).report
    with pytest.raises(dlforge.DlforgeError, match="not 'digits'"):
        dlforge.train("mlp", data="digits", out=tmp_path / "clf", resume=True, max_steps=3, **ck)


def test_arrays_with_negative_strides(tmp_path, gray_arrays, one_thread):
    """x[::-1] (a numpy view with negative strides) trains and predicts; before, torch.as_tensor raised
    ValueError."""
    x, y = gray_arrays
    run = dlforge.train("mlp", data=(x[::-1], y[::-1]), out=tmp_path / "run", img_size=8, hidden=[8],
                        max_steps=1, progress=False)
    assert len(dlforge.load(run.path).predict(x[::-1][:4])) == 4


def test_diffusion_with_fewer_than_50_timesteps(tmp_path, gray_arrays, one_thread):
    """timesteps=10 trains, draws its sample grid and samples (DDIM on all 10 steps). Before, the DDIM scheduler
    always started with 50 steps: '--steps: expected 1..10, got 50' at the first evaluation."""
    x, _ = gray_arrays
    pairs = [(x[i], f"a {'big' if i % 2 else 'small'} square") for i in range(20)]
    run = dlforge.train("unet-tiny", data=pairs, out=tmp_path / "run", img_size=8, timesteps=10, batch_size=8,
                        max_steps=2, eval_every=2, progress=False)
    assert (run.path / "samples.png").is_file()
    images = dlforge.load(run.path).sample("a big square", n=2)
    assert [im.size for im in images] == [(8, 8), (8, 8)]


def test_a_run_trained_on_data_in_memory_can_be_moved(tmp_path, gray_arrays, one_thread):
    """config.json kept the absolute path of the run's own copy of the data (corpus.txt, data.safetensors): a
    moved or renamed run could not evaluate or resume ("--data-file …/old/corpus.txt: no such file"), and a
    copied one read the original's files. Now it is "{run}/NAME", relative to the run directory."""
    import json
    import shutil
    text = "the cat sat on the mat.\nthe dog sat on the log.\n" * 20
    dlforge.train("gpt-tiny", data=text, out=tmp_path / "lm", block_size=8, width=16, layers=1, heads=1,
                  batch_size=4, max_steps=2, progress=False)
    x, y = gray_arrays
    dlforge.train("mlp", data=(x, y), out=tmp_path / "clf", img_size=8, hidden=[16], max_steps=2, progress=False)
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["data"]["data_file"] == "{run}/corpus.txt"
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["data"]["data_dir"] == "{run}/data.safetensors"
    for name in ("lm", "clf"):
        shutil.move(tmp_path / name, tmp_path / f"{name}-moved")
        run = dlforge.load(tmp_path / f"{name}-moved")
        assert run.evaluate()["loss"] > 0
    resumed = dlforge.train("gpt-tiny", out=tmp_path / "lm-moved", resume=True, max_steps=3, progress=False)
    assert resumed.report and json.loads((tmp_path / "lm-moved" / "config.json").read_text())["data"][
        "data_file"] == "{run}/corpus.txt"


def test_train_and_load_leave_the_callers_random_state_as_it_was(tmp_path, gray_arrays, one_thread):
    """Before: dlforge.train seeded torch's global generator with its --seed, and dlforge.load drew a model's
    initial weights from it, so the caller's torch.manual_seed(123) was silently replaced."""
    import torch
    x, y = gray_arrays
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    run = dlforge.train("mlp", data=(x, y), out=tmp_path / "r", img_size=8, hidden=[16], max_steps=2, progress=False)
    dlforge.load(run.path)
    assert torch.equal(torch.rand(3), want)


def test_a_handle_reports_into_its_run_only_while_it_holds_the_runs_model(tmp_path, gray_arrays, one_thread):
    """Before: a handle loaded before the run trained on wrote its older model's figures over report.json under the
    checkpoint's name; ema=False wrote the raw weights' figures there without a word; and a handle of a run moved
    away made a new folder of plots at the old place."""
    import json
    import shutil
    x, y = gray_arrays
    kw = dict(img_size=8, hidden=[16], eval_every=5, progress=False)
    run = dlforge.train("mlp", data=(x, y), out=tmp_path / "r", max_steps=5, **kw)
    old = dlforge.load(run.path)
    dlforge.train("mlp", out=tmp_path / "r", resume=True, max_steps=10, **kw)
    report = (tmp_path / "r" / "report.json").read_bytes()
    with pytest.raises(dlforge.DlforgeError, match=r"best.safetensors: the run has trained on since this handle "
                                                   r"loaded it \(step 5 then, 10 now\); dlforge.load it again"):
        old.evaluate()
    raw = dlforge.load(run.path, ema=False).evaluate()
    assert json.loads((tmp_path / "r" / "report-raw.json").read_text())["loss"] == raw["loss"]
    assert (tmp_path / "r" / "report.json").read_bytes() == report
    fresh = dlforge.load(run.path)
    shutil.move(tmp_path / "r", tmp_path / "moved")
    with pytest.raises(dlforge.DlforgeError, match="no run there any more"):
        fresh.evaluate()
    assert not (tmp_path / "r").exists()


def test_a_relative_data_dir_of_a_run_made_before_absolute_paths_is_left_as_it_was(tmp_path):
    """Classify runs made before dlforge stored --data-dir absolute may say "./A" (where they were trained):
    only "{run}/…" names the run's own directory."""
    from dlforge.runs import RUN_FORMAT, RunConfig
    d = {"format": RUN_FORMAT, "task": "classify", "model": {"name": "mlp", "kwargs": {}}, "train": {},
         "data": {"name": "folder", "data_dir": "./A"}}
    assert RunConfig.from_dict(d, run_dir=tmp_path).data["data_dir"] == "./A"
    d["data"]["data_dir"] = "{run}/data.safetensors"
    assert RunConfig.from_dict(d, run_dir=tmp_path).data["data_dir"] == str(tmp_path.resolve() / "data.safetensors")


def test_a_saved_runs_training_options_can_be_given_back_whole(tmp_path, gray_arrays, one_thread):
    """config.json's "train" holds --beta2 and --momentum (one of them always ignored) and the cosine's options
    on a constant rate: given back whole from Python, at their defaults, they train; changed, they are refused."""
    import json
    x, y = gray_arrays
    dlforge.train("mlp", data=(x, y), out=tmp_path / "a", img_size=8, hidden=[16], max_steps=2, progress=False)
    train = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert dlforge.train("mlp", data=(x, y), out=tmp_path / "b", img_size=8, hidden=[16], **train).report
    with pytest.raises(dlforge.DlforgeError, match="^--momentum: applies to --optimizer sgd or rmsprop only"):
        dlforge.train("mlp", data=(x, y), out=tmp_path / "c", img_size=8, hidden=[16], **{**train, "momentum": 0.5})

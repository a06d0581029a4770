"""What a new user hits first (issue 19): evaluating on other data never overwrites the run's own report,
messages name only files that exist, --max-steps is never silently capped, one option named per error, JSON
without float32 noise, honest progress lines, and run files with the user's umask. Tiny runs throughout."""
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlforge.cli import main
from tests.conftest import format1_run
from dlforge.train.checkpoint import read_meta

pytestmark = pytest.mark.usefixtures("one_thread")
DIGITS = ["--data", "digits", "--img-size", "8", "--no-progress"]


def _copy(family: str, tmp_path: Path) -> Path:
    return format1_run(family, tmp_path / family)


def _folder(root: Path, classes, per_class: int = 5) -> Path:
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            a = np.full((8, 8), 20 * i, np.uint8)
            a[k % 8, :] = 255  # class k lights up row k
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


def _captions_csv(root: Path, n: int) -> Path:
    """n 8×8 images, half dark and half with a bright left half, and their captions (as test_cli_diffusion)."""
    rows = ["image_path,caption"]
    for i in range(n):
        a = np.zeros((8, 8), np.uint8)
        a[:, :4] = 255 if i % 2 else 0
        Image.fromarray(a).save(root / f"{i}.png")
        rows.append(f"{i}.png,{'a bright left half' if i % 2 else 'a dark square'}")
    (root / "caps.csv").write_text("\n".join(rows) + "\n")
    return root / "caps.csv"


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. eval on other data
def test_eval_on_another_folder_of_the_same_classes_writes_beside_the_runs_report(tmp_path, capsys):
    """Before: `eval RUN --data-dir B` wrote B's report.json and plots over the run's own."""
    a, b = _folder(tmp_path / "A", ["dark", "light"]), _folder(tmp_path / "B", ["dark", "light"], per_class=4)
    run = tmp_path / "run"
    assert main(["train", "cnn-small", "--data", "folder", "--data-dir", str(a), "--img-size", "8", "--epochs", "1",
                 "--batch-size", "4", "--no-progress", "--out", str(run)]) == 0
    before = _files(run)
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(b), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data_source"] == str(b) and report["test_images"] == 2  # 20% of B's 8 images
    assert json.loads((run / "eval-B" / "report.json").read_text())["data_source"] == str(b)
    assert (run / "eval-B" / "confusion_matrix.png").is_file()
    assert {k: v for k, v in _files(run).items() if not k.startswith("eval-B/")} == before  # byte-identical



def test_a_folder_run_given_a_relative_data_dir_evaluates_and_resumes_from_anywhere(tmp_path, monkeypatch, capsys):
    """Before: config.json kept `--data-dir A` as typed, so eval and --resume from any other folder said
    "--data-dir A: not a directory"; and `eval RUN --data-dir .` reported into RUN/eval-/ as other data."""
    a = _folder(tmp_path / "A", ["dark", "light"])
    monkeypatch.chdir(tmp_path)
    assert main(["train", "mlp", "--data", "folder", "--data-dir", "A", "--img-size", "8", "--max-steps", "2",
                 "--batch-size", "4", "--no-progress", "--out", "run"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["data_dir"] == str(a)
    monkeypatch.chdir(a)
    run = tmp_path / "run"
    assert main(["eval", str(run)]) == 0
    assert main(["train", "mlp", "--out", str(run), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", ".", "--json"]) == 0  # the run's own folder, as "."
    assert json.loads(capsys.readouterr().out)["data_source"] == str(a)
    assert not [p.name for p in run.iterdir() if p.name.startswith("eval-")]

def test_eval_on_a_dataset_of_other_class_names_is_refused(tmp_path, capsys, reliability):
    """Before: ten classes a..j passed the class-count check, and their report replaced the digits run's."""
    run = _copy("classify", tmp_path)  # an mlp trained on digits: classes 0..9
    assert main(["eval", str(run), "--json"]) == 0
    before = _files(run)
    other = _folder(tmp_path / "letters", "abcdefghij")
    capsys.readouterr()
    assert main(["eval", str(run), "--data", "folder", "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dlforge: error: --data folder: its classes (a, b, c, d, …) "
                                                   "are not the run's (0, 1, 2, 3, …)"), err
    assert _files(run) == before and not (run / "eval-letters").exists()
    reliability.record("`eval --data` a dataset with as many classes but other names",
                       "refused in one line, exit 2; the run's report untouched")


# ---------------------------------------------------------------- 2. messages name only files that exist
def test_a_run_stopped_before_its_first_epoch_names_only_plots_that_exist(tmp_path, capsys):
    """Before: the report line listed learning_curves.png, which is not drawn without an epoch's record."""
    run = tmp_path / "run"
    assert main(["train", "mlp", *DIGITS, "--batch-size", "32", "--max-steps", "3", "--out", str(run)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "plots: " in x)
    named = line.split("plots: ", 1)[1].split(", ")
    assert named and "learning_curves.png" not in named
    for f in named:
        assert (run / f).is_file(), f


def test_a_diffusion_run_stopped_before_its_first_validation_names_no_samples_png(tmp_path, capsys):
    """Before: after_training said 'samples: RUN/samples.png' whether or not a sample grid had been drawn."""
    run = tmp_path / "run"
    assert main(["train", "unet-tiny", "--data", str(_captions_csv(tmp_path, 6)), "--img-size", "8",
                 "--no-progress", "--batch-size", "8", "--max-steps", "1", "--timesteps", "50",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert not (run / "samples.png").exists() and "samples.png" not in err
    assert "no validation yet (raise --max-steps past --eval-every 500)" in err


# ---------------------------------------------------------------- 3. --max-steps decides
def test_max_steps_without_epochs_runs_every_step_and_the_banner_says_so(tmp_path, capsys):
    """50 images: 45 train in 6 batches of 8. Before, the default 5 epochs stopped the run at step 30."""
    run = tmp_path / "run"
    assert main(["train", "unet-tiny", "--data", str(_captions_csv(tmp_path, 50)), "--img-size", "8",
                 "--no-progress", "--batch-size", "8", "--max-steps", "40", "--timesteps", "50",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "6 batches of 8" in err and "stops after step 40 (--max-steps 40)" in err
    assert read_meta(run / "checkpoints" / "last.safetensors")["step"] == 40
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 40


def test_the_banner_says_when_the_epochs_stop_the_run_first(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "mlp", *DIGITS, "--batch-size", "128", "--epochs", "2", "--max-steps", "1000",
                 "--out", str(run)]) == 0
    assert "stops after step 22 (2 epochs of 11 steps)" in capsys.readouterr().err  # 1,293 digits / 128
    assert read_meta(run / "checkpoints" / "last.safetensors")["step"] == 22


# ---------------------------------------------------------------- 4. smaller ones
def test_predict_top_k_0_is_one_line_naming_top_k(tmp_path, capsys):
    run = _copy("classify", tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(run), str(tmp_path / "x.png"), "--top-k", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlforge: error: --top-k: expected an integer, at least 1") and err.count("\n") == 1, err


def test_generate_with_a_negative_temperature_names_temperature_only(tmp_path, capsys):
    """Before: one message listed the four sampling limits for any one of them out of range."""
    assert main(["generate", str(_copy("lm", tmp_path)), "--temperature", "-1", "--max-new-tokens", "2"]) == 2
    assert capsys.readouterr().err == "dlforge: error: --temperature: expected 0 (greedy) or more, finite, got -1.0\n"


def test_the_unknown_words_note_appears_once_for_all_prompts(tmp_path, capsys):
    """Before: the note came once per image (4 images × 2 prompts)."""
    run = _copy("denoise", tmp_path)
    assert main(["sample", str(run), "--prompt", "a zzzz", "--prompt", "a zzzz 3", "--n", "4", "--steps", "1",
                 "--out", str(tmp_path / "g.png")]) == 0
    err = capsys.readouterr().err
    assert err.count("unknown words encoded as <unk>") == 1 and "<unk>: zzzz\n" in err, err


def _floats(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _floats(v)


def _float32_noise(obj) -> list[float]:
    """Numbers that are float32 values printed with float64's digits (0.14000000059604645, not 0.14)."""
    return [v for v in _floats(obj) if math.isfinite(v) and float(np.float32(v)) == v
            and len(repr(v).lstrip("-0.").split("e")[0].replace(".", "")) > 9]


def test_json_output_carries_no_float32_noise(tmp_path, capsys):
    run = _copy("classify", tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(run), str(tmp_path / "x.png"), "--json", "--top-k", "10"]) == 0
    assert main(["eval", str(run), "--json"]) == 0
    predict, report = map(json.loads, capsys.readouterr().out.splitlines())
    assert len(list(_floats(predict))) == 10 and _float32_noise(predict) == []
    assert isinstance(report["loss"], float) and _float32_noise(report) == []


def test_progress_lines_say_the_epoch_where_max_steps_ends_and_never_redraw(tmp_path, capsys, monkeypatch):
    """11 batches an epoch, --max-steps 25 ends in epoch 3. Before: 'Epoch 1/5' (the --epochs), and where stderr
    is not a terminal, tqdm's carriage-return redraws filled the log."""
    import importlib
    progress = importlib.import_module("dlforge.train.progress")  # dlforge.train is also the API's function
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)  # a line every batch
    assert main(["train", "mlp", "--data", "digits", "--img-size", "8", "--batch-size", "128", "--epochs", "5",
                 "--max-steps", "25", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    descs = set(re.findall(r"^(Epoch \d+/\d+): \d+/11 batches", err, re.MULTILINE))
    assert descs == {"Epoch 1/3", "Epoch 2/3", "Epoch 3/3"}, err


# ---------------------------------------------------------------- 5. file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_get_the_users_umask(tmp_path, umask, mode):
    """Before: files written through mkstemp (config, report, checkpoints) were 0600 whatever the umask."""
    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        assert main(["train", "mlp", *DIGITS, "--batch-size", "128", "--epochs", "1", "--out", str(run)]) == 0
    finally:
        os.umask(old)
    for f in ("config.json", "metrics.jsonl", "report.json", "checkpoints/last.safetensors",
              "checkpoints/best.safetensors"):
        assert (run / f).stat().st_mode & 0o777 == mode, f


def test_an_empty_translation_is_said_not_printed_as_a_blank_line(tmp_path, capsys, monkeypatch):
    from dlforge.recipes.seq2seq import Translator
    run = tmp_path / "s2s"
    format1_run("seq2seq", run)
    monkeypatch.setattr(Translator, "translate", lambda self, texts, to=None, beam=1, length_penalty=1.0:
                        [{"source": t, "to": to, "translation": ""} for t in texts])
    assert main(["translate", str(run), "12", "--to", "en"]) == 0
    assert capsys.readouterr().out == "(empty translation)\n"  # before: a blank line, as if nothing happened


@pytest.mark.parametrize("argv, says", [
    (["--data", "digits", "--val-fraction", "0.9999"],
     "--data digits: no images left to train on (1437 after the test split, 1437 of them for validation by "
     "--val-fraction 0.9999); give more images or a smaller --val-fraction"),
    (["--data", "folder", "--data-dir", "{one_each}"], "no images left to train on (1 after the test split, 1 of them")])
def test_training_with_no_training_images_left_is_refused(argv, says, tmp_path, capsys):
    """Before: the run 'trained' 0 steps (loss 0.0000, accuracy 0.00%), exit 0, with a report of a random model."""
    _folder(tmp_path / "one", ["a", "b"], per_class=1)
    argv = [a.replace("{one_each}", str(tmp_path / "one")) for a in argv]
    assert main(["train", "mlp", *argv, "--img-size", "8", "--max-steps", "2", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and not (tmp_path / "r").exists()


def test_predict_takes_an_rgba_array_as_one_image_and_names_bad_input(tmp_path):
    """Before: an (H, W, 4) array was H images (8 answers for one 8×8 picture); top_k=2.5 or "3", None, strings and
    complex numbers reached the caller as TypeError or NotImplementedError."""
    import dlforge
    clf = dlforge.load(_copy("classify", tmp_path))
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 7, np.uint8)], -1)
    one = clf.predict(rgba, top_k=2)
    assert len(one) == 1 and one[0]["top"] == clf.predict(rgb, top_k=2)[0]["top"]
    assert len(clf.predict(np.stack([rgba, rgba]), top_k=1)) == 2
    for top_k in (2.5, "3", True, 0):
        with pytest.raises(dlforge.DlforgeError, match=r"^--top-k: expected an integer, at least 1 \(at most 10"):
            clf.predict(rgb, top_k=top_k)
    assert len(clf.predict(rgb, top_k=np.int64(2))[0]["top"]) == 2
    with pytest.raises(dlforge.DlforgeError, match="^image: expected an image file, a PIL image or an array, got None$"):
        clf.predict(None)
    for bad, says in ((np.array([[1, "a"]], dtype=object), "an array of object"),
                      (np.zeros((8, 8), np.complex64), "an array of complex64")):
        with pytest.raises(dlforge.DlforgeError, match=f"^image: expected numbers \\(uint8, or floats in \\[0, 1\\]\\), "
                                                       f"got {says}$"):
            clf.predict(bad)


def test_a_device_or_load_argument_that_cannot_work_is_one_line(tmp_path, capsys):
    """Before: --device mps without an Apple GPU was torch's RuntimeError traceback from every command (and left a
    run with no checkpoint), --precision fp16 on a CPU was refused only after the run was written, and
    dlforge.load(None) / device=None were TypeErrors."""
    import torch

    import dlforge
    run = _copy("classify", tmp_path)
    bad = [((None,), {}, "path: expected a run directory (str or Path), got None"),
           ((123,), {}, "path: expected a run directory (str or Path), got 123"),
           ((run,), {"device": None}, "device: expected str, got None"),
           ((run,), {"ema": "no"}, "ema: expected bool, got 'no'"),
           ((run,), {"device": "xpu"}, "--device: expected auto, cpu, cuda, cuda:N or mps; got 'xpu'")]
    if not torch.backends.mps.is_available():
        bad.append(((run,), {"device": "mps"}, "--device mps: no Apple GPU (MPS) is available here (try --device auto)"))
    for args, kwargs, says in bad:
        with pytest.raises(dlforge.DlforgeError) as e:
            dlforge.load(*args, **kwargs)
        assert str(e.value) == says
    argv = ["train", "mlp", *DIGITS, "--max-steps", "1", "--out", str(tmp_path / "r")]
    refusals = [(["--precision", "fp16"], "--precision fp16 needs a GPU; on CPU use bf16 or fp32")]
    if not torch.backends.mps.is_available():
        refusals.append((["--device", "mps"], "--device mps: no Apple GPU (MPS) is available here"))
    for extra, says in refusals:
        if torch.cuda.is_available():
            break
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err and not (tmp_path / "r").exists()


def test_the_language_model_and_translator_handles_name_arguments_of_the_wrong_type(tmp_path):
    """Before: TypeError or AttributeError from torch or str (next_tokens(top_k=None), generate(5),
    max_new_tokens=2.5, top_k=1.5, translate([None]), beam=2.5), and a list prompt read as its items' characters."""
    import dlforge
    lm = dlforge.load(_copy("lm", tmp_path))
    for call, says in ((lambda: lm.next_tokens("the", top_k=None), "--top-k: expected an integer, at least 1, got None"),
                       (lambda: lm.generate("the", max_new_tokens=2.5), "--max-new-tokens: expected an integer, got 2.5"),
                       (lambda: lm.generate("the", top_k=1.5), "--top-k: expected an integer, got 1.5"),
                       (lambda: lm.generate("the", temperature="hot"), "--temperature: expected a number, got 'hot'"),
                       (lambda: lm.generate(5), "--prompt: expected text (a str), got int"),
                       (lambda: lm.generate(["the", "cat"]), "--prompt: expected text (a str), got list")):
        with pytest.raises(dlforge.DlforgeError) as e:
            call()
        assert str(e.value) == says
    tr = dlforge.load(_copy("seq2seq", tmp_path))
    for call, says in ((lambda: tr.translate([None]), "the texts to translate: expected str, got NoneType"),
                       (lambda: tr.translate(["12"], beam=2.5), "--beam: expected 1..64, got 2.5")):
        with pytest.raises(dlforge.DlforgeError) as e:
            call()
        assert str(e.value) == says


@pytest.mark.parametrize("pairs, says", [
    ([("1", "one"), ("2", "")] * 3, "data: pair 1: the target is empty"),
    ([("1",)] * 3, "data: pair 0: expected (source, target), got 1 items"),
    ([("1", "one"), (None, "two"), ("3", "three")], "data: pair 1: expected two texts, got (NoneType, str)"),
    ([("1", "one"), ("2", "tw\to")], "data: pair 1 holds a tab or a line break; give one-line texts"),
    ([("1", "one"), ("2", "two")], "data: 2 pairs; need at least 3 (train, validation, test)")])
def test_bad_pairs_in_memory_are_named_by_their_index(pairs, says, tmp_path):
    """Before: '--data-file RUN/pairs.tsv, line 2: the target is empty' (a file the user never gave, left behind),
    'expected a dataset name or a file for seq2seq, got list', and None translated as the text 'None'."""
    import dlforge
    with pytest.raises(dlforge.DlforgeError) as e:
        dlforge.train("transformer-tiny", data=pairs, out=tmp_path / "s", max_steps=1, progress=False)
    assert str(e.value) == says and not (tmp_path / "s").exists()


def test_output_into_a_closed_pipe_ends_quietly_as_a_unix_filter_does():
    """`dlforge data list | head -1`: before, a BrokenPipeError traceback (exit 1) once head had gone."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "dlforge", "data", "list"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""

"""End to end through the command line, on tiny real data (digits at 8×8)."""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.cli import main
from dlforge.train.checkpoint import load_checkpoint

FAST = ["--data", "digits", "--img-size", "8", "--no-progress", "--batch-size", "32"]


def _train(tmp_path, name, *extra):
    out = tmp_path / name
    assert main(["train", "cnn", *FAST, "--epochs", "2", "--out", str(out), "--json", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cnn"
    assert main(["train", "cnn", *FAST, "--epochs", "3", "--out", str(out)]) == 0
    return out


def test_train_cnn_loss_falls_and_report_is_complete(cnn_run):
    records = [json.loads(line) for line in (cnn_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["loss"] < records[0]["loss"] * 0.7
    report = json.loads((cnn_run / "report.json").read_text())
    assert report["accuracy"] > 0.8 and len(report["confusion_matrix"]) == 10
    assert report["per_class"]["3"]["support"] == 37
    for f in ("confusion_matrix.png", "learning_curves.png", "worst_test_images.png", "config.json",
              "checkpoints/best.safetensors", "checkpoints/last.safetensors"):
        assert (cnn_run / f).is_file(), f


def test_epoch_line_and_printed_report(tmp_path, capsys):
    _train(tmp_path, "r")
    out = capsys.readouterr().out
    assert "[Epoch 1] loss = " in out and "| accuracy = " in out and "val_accuracy" in out
    assert "precision" in out and "confusion matrix" in out
    assert json.loads(out.strip().splitlines()[-1])["accuracy"] > 0.3


def test_eval_json_matches_training_report(cnn_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(cnn_run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == json.loads((cnn_run / "report.json").read_text())["accuracy"]
    assert {"loss", "accuracy", "per_class", "confusion_matrix"} <= set(report)


def test_predict_any_size_and_mode(cnn_run, tmp_path, capsys):
    from dlforge.data.images import load_dataset
    d = load_dataset("digits")
    i = int((d.test_y == 7).nonzero()[0])
    img = Image.fromarray(d.test_x[i, 0].numpy()).resize((64, 64)).convert("RGB")
    img.save(tmp_path / "seven.png")
    Image.fromarray(d.test_x[i, 0].numpy()).save(tmp_path / "seven.jpg")
    capsys.readouterr()
    assert main(["predict", str(cnn_run), str(tmp_path / "seven.png"), str(tmp_path / "seven.jpg"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    assert len(preds) == 2 and len(preds[0]["top"]) == 3
    assert abs(sum(t["probability"] for t in preds[0]["top"]) - 1) < 1.0001
    assert preds[1]["top"][0]["class"] == "7"


def test_resume_equals_uninterrupted(tmp_path):
    whole = _train(tmp_path, "whole")
    part = tmp_path / "part"
    assert main(["train", "cnn", *FAST, "--epochs", "2", "--out", str(part), "--max-steps", "13"]) == 0
    assert main(["train", "cnn", *FAST, "--epochs", "2", "--out", str(part), "--resume"]) == 0
    a, meta_a = load_checkpoint(whole / "checkpoints" / "last.safetensors")
    b, meta_b = load_checkpoint(part / "checkpoints" / "last.safetensors")
    assert meta_a["step"] == meta_b["step"] == 2 * 41  # 1,293 training digits in batches of 32
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "images_per_s")}  # noqa: E731
    ra = [strip(json.loads(x)) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    rb = [strip(json.loads(x)) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert ra == rb


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, capsys, reliability):
    out = _train(tmp_path, "r")
    before = (out / "checkpoints" / "last.safetensors").read_bytes()
    code = main(["train", "cnn", *FAST, "--epochs", "3", "--out", str(out), "--resume", "--lr", "1e12"])
    err = capsys.readouterr().err
    assert code == 2 and "at step" in err and "lower --lr" in err
    assert (out / "checkpoints" / "last.safetensors").read_bytes() == before
    assert f"the last good checkpoint ({out / 'checkpoints' / 'last.safetensors'}) is kept" in err
    # before its first checkpoint there is none to keep, and the message does not name one
    assert main(["train", "cnn", *FAST, "--max-steps", "2", "--out", str(tmp_path / "new"), "--lr", "1e30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("dlforge: error: loss became nan at step 2; the run stopped before its first checkpoint, so "
                       "none is kept — try a lower --lr or --grad-clip")
    assert not (tmp_path / "new" / "checkpoints" / "last.safetensors").exists()
    reliability.record("loss becomes NaN/Inf (`--lr 1e12`)", "stopped with the step number; last good checkpoint untouched")


@pytest.mark.parametrize("loss, check", [
    ("bce", lambda r: r["classes"] == ["not 3", "3"] and r["accuracy"] > 0.85),
    ("mse", lambda r: "mae" in r and r["mae"] < 3.5),
])
def test_bce_and_mse_are_usable(tmp_path, capsys, loss, check):
    _train(tmp_path, loss, "--loss", loss, *(["--positive-class", "3"] if loss == "bce" else []))
    assert check(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))


def test_mlp_with_hidden_sizes_and_activation(tmp_path, capsys):
    out = tmp_path / "mlp"
    assert main(["train", "mlp", *FAST, "--epochs", "3", "--hidden", "64,32", "--activation", "tanh",
                 "--lr", "3e-3", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] > 0.85
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["kwargs"]["hidden"] == [64, 32]


@pytest.mark.parametrize("argv, message", [
    (["train", "resnet", "--data", "digits"], "unknown model 'resnet'; expected one of: asr-gru, asr-gru-small, asr-lstm, asr-lstm-small, cnn"),
    (["train", "cnn", "--data", "cifar"], "unknown dataset 'cifar'; expected one of: digits"),
    (["train", "cnn", "--optimizer", "lion"], "--optimizer: expected one of adam, adamw, sgd, rmsprop"),
    (["train", "cnn", "--loss", "hinge"], "--loss: expected one of cross-entropy, bce, mse"),
    (["train", "cnn", "--img-size", "2"], "--img-size"),
    (["train", "cnn", "--lr", "inf"], "--lr: expected a positive number, got inf"),  # was taken, and lost the run
    (["train", "cnn", "--positive-class", "3"], "--positive-class: applies to --loss bce only"),  # was ignored
    (["train", "cnn", "--optimizer", "sgd", "--beta2", "0.5"],  # were ignored, and kept in the config
     "--beta2: applies to --optimizer adam or adamw only; this run's --optimizer is sgd"),
    (["train", "cnn", "--min-lr-ratio", "0.3"], "--min-lr-ratio: applies to --lr-schedule cosine only; this run's "
                                                "--lr-schedule is constant"),
    (["train", "cnn", "--seed", "99999999999999999999"], "--seed: expected 0 .. 2^63 - 1"),  # was a traceback
    (["train", "cnn", "--data-dir", "/nonexistent"], "--data-dir: the digits dataset is bundled with scikit-learn; "
                                                    "it takes no --data-dir"),  # was ignored, and kept in the config
    (["train", "cnn", "--device", "cuda"], "--device"),
    # accepted and ignored before
    (["translate", "/nonexistent/run", "12", "--length-penalty", "2"], "--length-penalty: applies to beam search "
                                                                      "(--beam 2 or more) only"),
    (["transcribe", "/nonexistent/run", "a.wav", "--lm-weight", "0.9"], "--lm-weight: applies with --lm (shallow "
                                                                        "fusion with a language model) only"),
    (["backprop", "--momentum", "0.5"], "--momentum: applies to --optimizer sgd only"),
    (["train", "cnn", "--data", "arrays"], "--data arrays: images and labels given in Python"),  # "None: not a …"
    (["eval", "/nonexistent/run"], "not a dlforge run directory"),
    (["predict", "/nonexistent/run", "x.png"], "not a dlforge run directory"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch, reliability):
    monkeypatch.chdir(tmp_path)
    if argv[:3] == ["train", "cnn", "--device"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(argv + (["--no-progress"] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    reliability.record("bad command line for image models (unknown names, bad sizes, missing runs)",
                       "one line on stderr, exit code 2")


def test_resume_with_another_optimizer_is_refused_and_leaves_the_run_resumable(cnn_run, capsys, tmp_path,
                                                                              reliability):
    run = tmp_path / "cnn"
    shutil.copytree(cnn_run, run)
    config = (run / "config.json").read_bytes()
    assert main(["train", "cnn", *FAST, "--epochs", "4", "--out", str(run), "--resume", "--optimizer", "sgd"]) == 2
    assert "--optimizer sgd: this run was trained with adam" in capsys.readouterr().err
    # the refused command changed nothing: before, config.json kept "sgd" and every later --resume was refused
    assert (run / "config.json").read_bytes() == config
    assert main(["train", "cnn", *FAST, "--epochs", "4", "--out", str(run), "--resume"]) == 0
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["optimizer"], train["epochs"]) == ("adam", 4)
    reliability.record("`train --resume` with an option the checkpoint cannot take (`--optimizer sgd` on an adam run)",
                       "exit 2, one line; config.json untouched, so a later `--resume` continues")


def test_resume_with_a_budget_the_run_has_already_spent_is_refused(cnn_run, capsys, tmp_path):
    # before: it trained nothing, and config.json's max_steps became 50 on a run at step 123
    run = tmp_path / "cnn"
    shutil.copytree(cnn_run, run)
    config = (run / "config.json").read_bytes()
    step = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert main(["train", "cnn", *FAST, "--out", str(run), "--resume", "--max-steps", "50"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dlforge: error: --max-steps 50: counts from the run's start, and {run} is already at step {step}; to train "
        f"on, give more (e.g. --max-steps {step + 50})"]
    assert main(["train", "cnn", *FAST, "--out", str(run), "--resume", "--epochs", "2"]) == 2
    assert "--epochs 2: counts from the run's start, and" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == config
    assert main(["train", "cnn", *FAST, "--out", str(run), "--resume", "--epochs", "3"]) == 0  # its own: re-reports


def test_a_run_whose_last_checkpoint_was_lost_is_not_trained_again_from_step_0(cnn_run, capsys, tmp_path):
    # before: --resume said "the run stopped before its first checkpoint", started at step 0 and overwrote the
    # best checkpoint, metrics and report of the trained run; predict said it had never checkpointed
    run = tmp_path / "cnn"
    shutil.copytree(cnn_run, run)
    (run / "checkpoints" / "last.safetensors").unlink()
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "cnn", *FAST, "--out", str(run), "--resume", "--epochs", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dlforge: error: {run / 'checkpoints' / 'last.safetensors'}: missing, but this run has trained "
                   f"({run / 'checkpoints' / 'best.safetensors'} is there); restore it (or copy "
                   f"checkpoints/best.safetensors to it, to go on from the best), or train into another --out"]
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    shutil.rmtree(run / "checkpoints")
    assert main(["predict", str(run), str(tmp_path / "x.png")]) == 2
    assert "missing, but this run has trained (its report.json is there)" in capsys.readouterr().err


def test_eval_of_a_read_only_run_says_so_before_it_evaluates(cnn_run, capsys, monkeypatch):
    # before: it evaluated in full, then failed to write report.json and printed no figure. access(2) is what a
    # read-only mount answers (EROFS, for root too; the tests run as root, for whom chmod 555 is no bar)
    from dlforge.recipes.classify import Classifier
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == cnn_run and mode == os.W_OK
                        else real(p, mode))
    monkeypatch.setattr(Classifier, "evaluate", lambda *a, **k: pytest.fail("it evaluated"))
    run = cnn_run
    assert main(["eval", str(run), "--json"]) == 2
    assert capsys.readouterr().err.strip() == (f"dlforge: error: {run}: read-only; eval writes report.json and its "
                                               f"plots into the run directory: copy the run somewhere writable "
                                               f"first (cp -r)")


def test_a_second_training_process_on_one_run_is_refused_at_once(cnn_run, capsys, tmp_path, reliability):
    # before, two commands on one run directory (a --resume while it trains, two new runs started together)
    # both trained into it, and it ended with one's checkpoints and the other's config
    from dlforge.runs import training_lock
    run = tmp_path / "cnn"
    shutil.copytree(cnn_run, run)
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with training_lock(run):  # as a `dlforge train` of this run holds it, in another process
        assert main(["train", "cnn", *FAST, "--out", str(run), "--resume", "--epochs", "4"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"dlforge: error: --out {run}: another dlforge process is training this run now; wait for "
                       f"it to end (then --resume), or choose another --out"]
        fresh = tmp_path / "fresh"
        with training_lock(fresh):
            assert main(["train", "cnn", *FAST, "--epochs", "1", "--out", str(fresh)]) == 2
            assert "another dlforge process is training this run now" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["train", "cnn", *FAST, "--out", str(run), "--resume", "--epochs", "4"]) == 0  # released
    # a folder made only to hold the lock, for a run that never started, is not left behind
    assert main(["train", "cnn", *FAST, "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "not a dlforge run directory" in capsys.readouterr().err and not (tmp_path / "none").exists()
    reliability.record("a second `dlforge train` on a run that is training (`--resume` meanwhile, or two new runs "
                       "into one --out)", "exit 2 at once, one line; the training run untouched", 2)


def test_resume_uses_the_runs_own_data_and_model(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "cnn", *FAST, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "cnn", "--data", "fashion-mnist", "--no-progress", "--epochs", "2", "--out", str(out),
                 "--resume"]) == 2  # another dataset is refused, not silently ignored
    assert "this run was made with data = 'digits', not 'fashion-mnist'" in capsys.readouterr().err
    assert main(["train", "cnn", "--no-progress", "--epochs", "2", "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "training cnn (" in err and " on digits (" in err
    assert main(["train", "mlp", "--no-progress", "--epochs", "3", "--out", str(out), "--resume"]) == 2
    assert "this run trains 'cnn', not 'mlp'" in capsys.readouterr().err


def test_init_from_a_trained_run(cnn_run, tmp_path):
    out = tmp_path / "warm"
    assert main(["train", "cnn", *FAST, "--epochs", "1", "--out", str(out),
                 "--init-from", str(cnn_run / "checkpoints" / "best.safetensors")]) == 0
    first = lambda run: json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]  # noqa: E731
    assert first(out) < 0.5 * first(cnn_run)  # starts trained, not from scratch


def test_init_from_refuses_code_and_wrong_shapes(cnn_run, tmp_path, capsys):
    from tests.train.test_init_from import Exploit
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": Exploit(str(marker))}, tmp_path / "evil.pt")
    assert main(["train", "cnn", *FAST, "--out", str(tmp_path / "a"), "--init-from", str(tmp_path / "evil.pt")]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()
    assert main(["train", "cnn", "--data", "digits", "--img-size", "16", "--no-progress", "--out", str(tmp_path / "b"),
                 "--init-from", str(cnn_run / "checkpoints" / "best.safetensors")]) == 2
    assert "fc1.weight has shape" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(cnn_run, capsys, reliability):
    before = (cnn_run / "checkpoints" / "last.safetensors").read_bytes()
    assert main(["train", "cnn", *FAST, "--out", str(cnn_run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (cnn_run / "checkpoints" / "last.safetensors").read_bytes() == before
    reliability.record("`train --out` an existing run without `--resume`", "refused; the run untouched")


def test_undecodable_image_for_predict(cnn_run, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"garbage")
    assert main(["predict", str(cnn_run), str(tmp_path / "x.png")]) == 2
    assert "x.png: cannot decode" in capsys.readouterr().err


def test_eval_with_a_dataset_of_other_classes(cnn_run, tmp_path, capsys):
    for c in "abc":
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    assert main(["eval", str(cnn_run), "--data", "folder", "--data-dir", str(tmp_path)]) == 2
    assert "3 classes, but the run's model predicts 10" in capsys.readouterr().err


def test_run_of_another_model_is_refused(cnn_run, tmp_path, capsys):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(cnn_run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["name"] = "mlp"
    (other / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(other)]) == 2
    assert "holds model 'cnn'" in capsys.readouterr().err


def _folder_with_bad_images(root, n_bad=3):
    for c, v in (("dark", 20), ("light", 230)):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), v + i, np.uint8)).save(root / c / f"{i}.png")
    for i in range(n_bad):
        (root / ("dark", "light")[i % 2] / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    return root


def test_folder_with_bad_images_lists_them_or_skips_them(tmp_path, capsys, reliability):
    d = _folder_with_bad_images(tmp_path / "imgs")
    argv = ["train", "cnn-small", "--data", "folder", "--data-dir", str(d), "--img-size", "8", "--epochs", "1",
            "--batch-size", "4", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"dlforge: error: --data-dir {d}: 3 images cannot be decoded (or pass --skip-bad-images):"
    assert sorted(line.split("/")[-1].split(":")[0] for line in err[1:]) == [f"broken{i}.png" for i in range(3)]
    assert not (tmp_path / "refused").exists()  # refused before any training
    out = tmp_path / "skipped"
    assert main([*argv, "--out", str(out), "--skip-bad-images"]) == 0
    err = capsys.readouterr().err
    assert f"dlforge: skipped 3 unreadable images in {d}" in err
    sizes = re.search(r"folder \((\d+) train / (\d+) val / (\d+) test images", err).groups()
    assert sum(map(int, sizes)) == 12  # every good image, no bad one
    assert main(["eval", str(out)]) == 0  # the run remembers to skip them
    reliability.record("`train --data folder` with undecodable images, with and without `--skip-bad-images`",
                       "every file listed in one error, exit 2; or skipped and counted")


def test_folder_without_data_dir_is_one_line(tmp_path, capsys):
    assert main(["train", "cnn", "--data", "folder", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == "dlforge: error: --data folder needs --data-dir DIR: one sub-folder of images per class\n"


def _images(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("layout, says", [
    ({"one class": 3}, "expected one sub-folder of images per class, two classes or more; found 1 ('one class')"),
    ({"a": 3, "b": 0}, "class folder(s) 'b' hold no .bmp/.gif/.jpeg/.jpg/.png/.ppm/.webp images"),
    ({"train/a": 3, "train/b": 3, "test/a": 2, "test/b": 2, "test/bird": 2},
     "/test: class folder(s) 'bird' are not among the training classes ('a', 'b')"),
])
def test_a_folder_that_cannot_make_a_classifier_is_one_line(layout, says, tmp_path, capsys, reliability):
    # before: one class trained to "100% accuracy", an empty folder became a class, a test class the training
    # folder lacks was dropped from the report; and hidden folders (.ipynb_checkpoints) were classes
    root = tmp_path / "imgs"
    for folder, n in {**layout, ".ipynb_checkpoints": 1}.items():
        _images(root / folder, n)
    argv = ["train", "cnn-small", "--data", "folder", "--data-dir", str(root), "--img-size", "8", "--max-steps", "2",
            "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dlforge: error: --data-dir {root}") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    reliability.record("an image folder that cannot make a classifier (one class, an empty class, a test class "
                       "the training folder lacks)", "exit 2, one line naming the folder and the classes")


def test_hidden_folders_are_not_classes(tmp_path, capsys):
    root = tmp_path / "imgs"
    for folder in ("a", "b", ".ipynb_checkpoints", "__MACOSX"):
        _images(root / folder)
    assert main(["train", "cnn-small", "--data", "folder", "--data-dir", str(root), "--img-size", "8", "--max-steps",
                 "1", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["facts"]["classes"] == ["a", "b"]


def test_eval_needs_only_the_test_files(tiny_idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "cnn-small", "--data", "mnist", "--data-dir", str(tiny_idx_dir), "--img-size", "12",
                 "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    for f in tiny_idx_dir.glob("train-*"):
        f.unlink()
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_images"] == 40
    for f in tiny_idx_dir.glob("t10k-labels*"):
        f.unlink()
    assert main(["eval", str(out)]) == 2
    assert capsys.readouterr().err == (f"dlforge: error: --data-dir {tiny_idx_dir}: missing t10k-labels-idx1-ubyte "
                                       f"(raw or .gz) for mnist\n")


def test_the_diffusion_alias_is_a_model_name_everywhere(capsys):
    """`dlforge train diffusion` worked, but `models` did not list it and `summary diffusion` was 'unknown model'."""
    assert main(["models"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(r.split() == ["diffusion", "=", "unet"] for r in rows)
    assert len({r.index(r.split()[1]) for r in rows if not r.startswith("diffusion")}) == 1  # one column for tasks
    assert main(["summary", "diffusion"]) == 0
    alias = capsys.readouterr().out
    assert main(["summary", "unet"]) == 0
    assert alias.replace("diffusion (denoise)", "unet (denoise)") == capsys.readouterr().out


def test_help_shows_the_defaults_that_apply(capsys):
    """predict's --top-k 3, generate's --temperature 0.8, serve's --port 8000 were never shown; train's
    --batch-size said 64 for speech runs too (32), --beta2 '0.99 for small LMs' (only the budget table's rows)."""
    for argv, says in ((["predict", "--help"], r"--top-k TOP_K\s+default 3\n"),
                       (["serve", "--help"], r"--port PORT\s+default 8000\n"),
                       (["backprop", "--help"], r"--lr LR\s+default 0.001\n"),
                       (["train", "--help"], r"--batch-size BATCH_SIZE\s+default 64; speech 32\n")):
        with pytest.raises(SystemExit):
            main(argv)
        assert re.search(says, capsys.readouterr().out), argv


def test_a_misspelt_option_is_named_with_its_command_and_the_nearest_option(capsys):
    with pytest.raises(SystemExit) as e:  # before: "unrecognized arguments: --max-stpes 3", and nothing more
        main(["train", "cnn", "--max-stpes", "3"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("dlforge: error: train: unrecognized arguments: --max-stpes "
                                                         "3 (did you mean --max-steps?)")

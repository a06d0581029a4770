"""Text-to-image diffusion end to end through the command line, on digits at 8×8: train (the loss falls,
sample grids, checkpoints with the EMA), resume, sample (+ trajectory), noise, eval with a classifier,
a captions CSV, and bad input as one-line errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.cli import main
from dlforge.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--data", "digits", "--img-size", "8", "--no-progress", "--batch-size", "32", "--lr", "3e-3",
        "--eval-every", "40", "--timesteps", "200"]


def _metrics(run: Path, key: str) -> list:
    return [json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines() if key in json.loads(x)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "dif"
    assert main(["train", "unet-tiny", *FAST, "--max-steps", "120", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cls"
    assert main(["train", "cnn-small", "--data", "digits", "--img-size", "8", "--no-progress", "--epochs", "1",
                 "--out", str(out)]) == 0
    return out


def test_loss_falls_and_the_run_is_complete(run):
    val = _metrics(run, "val_loss")
    assert len(val) == 3 and val[0] > val[1] > val[2] and val[2] < 0.25  # at initialisation ε̂ = 0: loss 1
    assert _metrics(run, "step")[-1] == 120
    assert _metrics(run, "accuracy") == [] and _metrics(run, "val_accuracy") == []  # nothing to be right about
    for f in ("config.json", "captions.json", "samples.png", "samples/step-000040.png", "samples/step-000120.png",
              "learning_curves.png", "report.json", "checkpoints/best.safetensors"):
        assert (run / f).is_file(), f
    tensors, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert int(tensors["task.ema_updates"]) == 120 and "task.ema.conv_in.weight" in tensors
    assert meta["task"]["name"] == "denoise" and meta["task"]["num_train_timesteps"] == 200


def test_sample_grid_trajectory_and_json(run, tmp_path, capsys):
    grid, strip = tmp_path / "grid.png", tmp_path / "strip.png"
    assert main(["sample", str(run), "--prompt", "a handwritten seven", "--prompt", "the digit 3", "--n", "4",
                 "--steps", "10", "--guidance", "3", "--out", str(grid), "--trajectory", str(strip), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 8 and grid.stat().st_size > 3000 and strip.stat().st_size > 3000
    assert main(["sample", str(run), "--prompt", "the digit 3", "--n", "2", "--sampler", "ddpm", "--seed", "1",
                 "--out", str(grid)]) == 0  # all 200 training timesteps


def test_unknown_words_fall_back_to_unk(run, tmp_path, capsys):
    assert main(["sample", str(run), "--prompt", "a purple handwritten seven", "--n", "1", "--steps", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert "unknown words encoded as <unk>: purple" in capsys.readouterr().err


def test_noise_strip(tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.fromarray((np.arange(32 * 32 * 3) % 255).astype(np.uint8).reshape(32, 32, 3)).save(img)
    assert main(["noise", str(img), "--out", str(tmp_path / "n.png"), "--frames", "5", "--size", "32"]) == 0
    assert "t = 0, 250, 500, 749, 999" in capsys.readouterr().out and (tmp_path / "n.png").stat().st_size > 3000
    # more frames than steps: t = 0, 1, 1, 2, 2, 3, 3, 4 was drawn, each middle step twice
    assert main(["noise", str(img), "--out", str(tmp_path / "m.png"), "--frames", "8", "--timesteps", "5"]) == 2
    assert capsys.readouterr().err == ("dlforge: error: --frames 8: more than the 5 --timesteps; at most one frame per "
                                       "step\n") and not (tmp_path / "m.png").exists()
    assert main(["noise", str(img), "--out", str(tmp_path / "m.png"), "--frames", "5", "--timesteps", "5"]) == 0
    assert "t = 0, 1, 2, 3, 4" in capsys.readouterr().out


def test_eval_with_a_classifier(run, classifier, capsys, tmp_path):
    run = Path(shutil.copytree(run, tmp_path / "run"))
    trained = json.loads((run / "report.json").read_text())
    assert main(["eval", str(run), "--classifier", str(classifier), "--n", "20", "--steps", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 0 <= r["prompt_accuracy"] <= 1 and len(r["per_class_accuracy"]) == 10 and r["images_per_s"] > 0
    assert 0 <= r["frechet_real"] < r["frechet_noise"] and r["frechet"] >= 0 and r["steps"] == 5
    assert r["kid_real"] < r["kid_noise"] and r["kid_std"] >= 0
    assert (run / "eval_samples.png").is_file()
    # the report keeps the training's figures; an evaluation without a classifier (a grid only) changes nothing
    # in it: before, it replaced report.json with one holding no figure at all
    report = json.loads((run / "report.json").read_text())
    assert report["best_val_loss"] == trained["best_val_loss"] and report["prompt_accuracy"] == pytest.approx(
        r["prompt_accuracy"])
    assert main(["eval", str(run), "--n", "10", "--steps", "2"]) == 0
    assert json.loads((run / "report.json").read_text()) == report


def test_resume_continues_with_the_moving_average(run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run, out)
    assert main(["train", "unet-tiny", *FAST, "--resume", "--out", str(out), "--max-steps", "160"]) == 0
    assert _metrics(out, "step")[-1] == 160
    tensors, _ = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert int(tensors["task.ema_updates"]) == 160


def test_resume_equals_uninterrupted(tmp_path):
    """Stopped at step 20 and resumed to 40: the weights (channels-last, as the recipe trains them), AdamW's
    moments, the moving average and the validation loss at step 40 are bit for bit those of one run of 40 steps."""
    argv = ["train", "unet-tiny", *FAST, "--seed", "5"]
    assert main([*argv, "--max-steps", "40", "--out", str(tmp_path / "whole")]) == 0
    assert main([*argv, "--max-steps", "20", "--out", str(tmp_path / "part")]) == 0
    assert main([*argv, "--max-steps", "40", "--out", str(tmp_path / "part"), "--resume"]) == 0
    whole, _ = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.safetensors")
    part, _ = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.safetensors")
    assert whole.keys() == part.keys() and any(k.startswith("optim.") for k in whole)
    assert any(k.startswith("task.ema.") for k in whole)
    assert [k for k in whole if not torch.equal(whole[k], part[k])] == []
    assert _metrics(tmp_path / "whole", "val_loss")[-1] == _metrics(tmp_path / "part", "val_loss")[-1]  # step 40


def test_captions_csv_end_to_end(tmp_path, capsys):
    rows = ["image_path,caption"]
    for i in range(16):
        a = np.zeros((8, 8), np.uint8)
        a[:, : 4] = 255 if i % 2 else 0
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'a bright left half' if i % 2 else 'a dark square'}")
    # with Excel's byte-order mark ("CSV UTF-8"): it was read into the header, "image '\ufeffimage_path' not found"
    (tmp_path / "caps.csv").write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "csvrun"
    assert main(["train", "unet-tiny", "--data", str(tmp_path / "caps.csv"), "--img-size", "8", "--no-progress",
                 "--batch-size", "8", "--max-steps", "6", "--timesteps", "50", "--out", str(out)]) == 0
    assert main(["sample", str(out), "--prompt", "a dark square", "--n", "2", "--steps", "3",
                 "--out", str(tmp_path / "s.png")]) == 0


def test_captions_csv_with_undecodable_images(tmp_path, capsys):
    rows = [f"{i}.png,{'a bright square' if i % 2 else 'a dark square'}" for i in range(8)]
    for i in range(8):
        Image.fromarray(np.full((8, 8), 255 * (i % 2), np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"not a png")
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    argv = ["train", "unet-tiny", "--data", str(tmp_path / "caps.csv"), "--img-size", "8", "--no-progress",
            "--batch-size", "4", "--max-steps", "2", "--timesteps", "50", "--val-fraction", "0.3"]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("caps.csv: 1 image cannot be decoded (or pass --skip-bad-images):")
    assert err[1].startswith(f"  caps.csv:4: {tmp_path / '3.png'}: cannot decode image") and len(err) == 2
    assert main([*argv, "--out", str(tmp_path / "skipped"), "--skip-bad-images"]) == 0
    assert "dlforge: skipped 1 unreadable image in" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "--prompt: the prompt is empty"),
    (["--prompt", "zebra crossing"], "none of its words is in the caption vocabulary"),
    (["--prompt", "a seven", "--guidance", "40"], "--guidance: expected a scale in [0, 30]"),
    (["--prompt", "a seven", "--steps", "0"], "--steps: expected 1..200"),
    (["--prompt", "a seven", "--steps", "500"], "--steps: expected 1..200"),
    (["--prompt", "a seven", "--sampler", "euler"], "--sampler: expected one of ddim, ddpm"),
    (["--prompt", "a seven", "--eta", "2"], "--eta: expected a number in [0, 1]"),
    (["--prompt", "a seven", "--n", "0"], "--n: expected 1..4096"),
])
def test_bad_sampling_input_is_one_line(run, tmp_path, capsys, argv, message):
    assert main(["sample", str(run), *argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_training_input_is_one_line(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "c.csv").write_text("a.png,a thing\nmissing.png,another\na.png,third\ngone.png,fourth\n")
    cases = [(["--data", str(tmp_path / "c.csv")], "c.csv:2: image 'missing.png' not found and 1 more (lines 4)"),
             (["--data", "digits", "--text-encoder", str(tmp_path / "nope")], "no such folder"),
             (["--data", "digits", "--cond-drop", "1.5"], "--cond-drop"),
             (["--data", "digits", "--beta-schedule", "quadratic"], "--beta-schedule")]
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        cases.append((["--data", "digits", "--text-encoder", str(tmp_path)], "needs the sentence-transformers package"))
    for argv, message in cases:
        assert main(["train", "unet-tiny", *argv, "--img-size", "8", "--max-steps", "1", "--no-progress",
                     "--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

"""The moving average of the weights that classifiers, language models (and diffusion) validate and load
(AveragedWeights)."""
import json

import pytest
import torch

import dlforge
from dlforge.cli import main
from dlforge.errors import DlforgeError
from dlforge.train.checkpoint import load_checkpoint
from dlforge.train.tasks import ClassifyTask

FAST = dict(data="digits", img_size=8, batch_size=32, progress=False)


def test_averaged_block_swaps_in_the_average_and_always_swaps_back():
    net = torch.nn.Linear(2, 1, bias=False)
    task = ClassifyTask(num_classes=2, ema_decay=0.5)
    with task.averaged(net):  # nothing averaged yet: the raw weights
        assert task.ema is None
    with torch.no_grad():
        net.weight.fill_(1.0)
    task.after_step(net)                         # first update: the average starts at θ
    with torch.no_grad():
        net.weight.fill_(5.0)
    task.after_step(net)                         # d = min(0.5, 3/12) = 0.25: 0.25·1 + 0.75·5
    assert task.ema["weight"][0, 0].item() == pytest.approx(4.0)
    with pytest.raises(RuntimeError):
        with task.averaged(net):
            assert net.weight[0, 0].item() == pytest.approx(4.0)
            raise RuntimeError("an evaluation that fails")
    assert net.weight[0, 0].item() == 5.0 and task.ema["weight"][0, 0].item() == pytest.approx(4.0)


def test_decay_zero_keeps_no_average_and_a_bad_decay_is_refused():
    net = torch.nn.Linear(2, 1)
    task = ClassifyTask(num_classes=2, ema_decay=0.0)
    task.after_step(net)
    assert task.ema is None and task.state_tensors() == {}
    with pytest.raises(DlforgeError, match=r"--ema-decay: expected a number in \[0, 1\)"):
        ClassifyTask(num_classes=2, ema_decay=1.0)


def test_a_classifier_run_validates_and_loads_the_average(tmp_path):
    run = dlforge.train("cnn-small", out=tmp_path / "r", epochs=2, **FAST)
    assert run.config.task_options["ema_decay"] == 0.999          # new runs keep it by default
    tensors, meta = load_checkpoint(run.path / "checkpoints" / "best.safetensors")
    assert int(tensors["task.ema_updates"]) == meta["step"] > 0
    averaged = dlforge.load(run.path)
    raw = dlforge.load(run.path, ema=False)
    for name, p in averaged.model.named_parameters():
        assert torch.equal(p.detach(), tensors[f"task.ema.{name}"]), name
        assert torch.equal(dict(raw.model.named_parameters())[name].detach(), tensors[f"model.{name}"]), name
    assert not all(torch.equal(tensors[f"task.ema.{n}"], tensors[f"model.{n}"]) for n, _ in raw.model.named_parameters())
    # the validation logged at the last epoch is the average's: re-score it from the checkpoint's weights
    from dlforge.recipes.classify import DataConfig, predict_batches, prepare_data
    from dlforge.data.transforms import ImageTransform, TransformConfig
    data = prepare_data(DataConfig(**run.config.data), run.config.facts["data_seed"])
    tf = ImageTransform(TransformConfig(**run.config.facts["transform"]), train=False)
    last = dlforge.load(run.path, which="last")
    out = predict_batches(last.model, last.task, data.val_x, tf, torch.device("cpu"), "fp32")
    logged = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()][-1]
    assert (out.argmax(1) == data.val_y).float().mean().item() == pytest.approx(logged["val_accuracy"])
    # and the report is the loaded (averaged) model's test evaluation
    assert averaged.evaluate()["accuracy"] == run.report["accuracy"]


def test_decay_zero_trains_the_plain_recipe(tmp_path):
    run = dlforge.train("cnn-small", out=tmp_path / "r", epochs=1, ema_decay=0.0, **FAST)
    tensors, _ = load_checkpoint(run.path / "checkpoints" / "last.safetensors")
    assert not any(k.startswith("task.ema") for k in tensors)


LM = dict(block_size=16, width=32, layers=1, heads=2, batch_size=8, eval_every=10, progress=False)


def test_a_language_model_run_validates_and_loads_the_average(tmp_path):
    text = "the cat sat on the mat. a dog ran in the fog. " * 40
    run = dlforge.train("gpt-tiny", data=text, out=tmp_path / "lm", max_steps=20, **LM)
    assert run.config.task_options["ema_decay"] == 0.99                # new runs keep it by default
    tensors, meta = load_checkpoint(run.path / "checkpoints" / "last.safetensors")
    assert int(tensors["task.ema_updates"]) == meta["step"] == 20
    averaged, raw = dlforge.load(run.path, which="last"), dlforge.load(run.path, which="last", ema=False)
    for name, p in averaged.model.named_parameters():
        assert torch.equal(p.detach(), tensors[f"task.ema.{name}"]), name
    assert not torch.equal(averaged.model.tok.weight, raw.model.tok.weight)
    # the validation logged at step 20 is the average's, not the raw weights'
    from dlforge.recipes.language_model import TextDataConfig, lm_loss, prepare
    cfg = run.config
    data = prepare(TextDataConfig(**cfg.data), averaged.tokenizer)
    score = lambda h: lm_loss(h.model, data.val, cfg.data["block_size"], torch.device("cpu"),
                              max_tokens=cfg.data["eval_tokens"])["loss"]
    logged = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines() if "val_loss" in x][-1]
    assert logged["step"] == 20 and score(averaged) == pytest.approx(logged["val_loss"], rel=1e-6)
    assert score(raw) != pytest.approx(logged["val_loss"], rel=1e-6)


def test_a_recurrent_language_model_resumes_exactly_with_its_average_and_state(tmp_path):
    text = "to be or not to be that is the question " * 60
    opts = dict(block_size=16, width=24, batch_size=4, eval_every=10, progress=False, seed=3)
    whole = dlforge.train("lstm", data=text, out=tmp_path / "whole", max_steps=20, **opts)
    dlforge.train("lstm", data=text, out=tmp_path / "cut", max_steps=10, **opts)
    cut = dlforge.train("lstm", data=text, out=tmp_path / "cut", resume=True, max_steps=20, **opts)
    a, _ = load_checkpoint(whole.path / "checkpoints" / "last.safetensors")
    b, _ = load_checkpoint(cut.path / "checkpoints" / "last.safetensors")
    assert any(k.startswith("task.ema.") for k in a) and any(k.startswith("task.state.") for k in a)
    for k in a:
        if k.startswith(("model.", "task.")):
            assert torch.equal(a[k], b[k]), k


def test_ema_decay_is_refused_where_it_does_not_apply(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{n}\t{str(n)[::-1]}\n" for n in range(100, 140)))
    assert main(["train", "transformer-tiny", "--data", str(tsv), "--ema-decay", "0.9", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--ema-decay: does not apply to transformer-tiny" in err and len(err.splitlines()) == 1
    assert main(["train", "gpt-tiny", "--data-file", __file__, "--ema-decay", "1", "--no-progress"]) == 2
    assert "--ema-decay: expected a number in [0, 1)" in capsys.readouterr().err
    assert main(["train", "cnn", "--ema-decay", "1.5", "--no-progress"]) == 2
    assert "--ema-decay: expected a number in [0, 1)" in capsys.readouterr().err

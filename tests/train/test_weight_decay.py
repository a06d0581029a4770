"""--weight-decay-on: weight decay on every parameter (all) or only on the weight matrices (matrices)."""
import pytest
import torch

import dlforge
from dlforge.cli import main
from dlforge.registry import create_model
from dlforge.train.checkpoint import load_checkpoint
from dlforge.train.trainer import TrainConfig, build_optimizer, parameter_groups
from dlforge.errors import DlforgeError

TEXT = "the cat sat on the mat. a dog ran in the fog. " * 40


def _gpt():
    torch.manual_seed(0)
    return create_model("gpt-tiny", vocab_size=20, block_size=16)


def test_matrices_leave_biases_and_norm_gains_undecayed():
    model = _gpt()
    cfg = TrainConfig(lr=0.1, weight_decay=0.5, weight_decay_on="matrices", optimizer="adamw")
    opt = build_optimizer(cfg, parameter_groups(cfg, model), torch.device("cpu"))
    decayed, kept = opt.param_groups
    assert decayed["weight_decay"] == 0.5 and kept["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in kept["params"])
    assert kept["params"] and len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():  # no gradient: AdamW's step is its decay alone, p ← p·(1 − lr·wd)
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        want = before[n] * (1 - 0.1 * 0.5) if p.dim() >= 2 else before[n]
        assert torch.allclose(p.detach(), want, rtol=0, atol=1e-7), n
    assert any(p.dim() < 2 for p in model.parameters())  # the test saw both kinds


@pytest.mark.parametrize("options", [dict(weight_decay_on="all", weight_decay=0.5), dict(weight_decay_on="matrices",
                                                                                       weight_decay=0.0)])
def test_one_group_where_every_parameter_is_treated_alike(options):
    assert isinstance(parameter_groups(TrainConfig(**options), _gpt())[0], torch.nn.Parameter)


def test_a_bad_value_is_one_clear_error():
    with pytest.raises(DlforgeError, match="--weight-decay-on: expected one of all, matrices, got 'norms'"):
        TrainConfig(weight_decay_on="norms")


def test_resume_is_exact_and_refuses_another_grouping(tmp_path, capsys):
    opts = dict(block_size=16, batch_size=4, eval_every=10, progress=False, weight_decay=0.1,
                weight_decay_on="matrices")
    whole = dlforge.train("gpt-tiny", data=TEXT, out=tmp_path / "whole", max_steps=20, **opts)
    dlforge.train("gpt-tiny", data=TEXT, out=tmp_path / "cut", max_steps=10, **opts)
    cut = dlforge.train("gpt-tiny", data=TEXT, out=tmp_path / "cut", resume=True, max_steps=20, **opts)
    a, meta = load_checkpoint(whole.path / "checkpoints" / "last.safetensors")
    b, _ = load_checkpoint(cut.path / "checkpoints" / "last.safetensors")
    assert [g["weight_decay"] for g in meta["optimizer"]["param_groups"]] == [0.1, 0.0]
    for k in a:
        if k.startswith(("model.", "task.", "optim.")):
            assert torch.equal(a[k], b[k]), k
    code = main(["train", "gpt-tiny", "--out", str(tmp_path / "cut"), "--resume", "--max-steps", "30",
                 "--weight-decay-on", "all", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == ("dlforge: error: --weight-decay-on all: this run was trained with "
                                     "--weight-decay-on matrices and --weight-decay 0.1; resume it with the same")

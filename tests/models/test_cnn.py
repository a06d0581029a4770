import pytest
import torch
import torch.nn.functional as F

from dlforge.cli import main
from dlforge.models.cnn import MyNet
from dlforge.models.conv import conv3x3
from dlforge.recipes.classify import summary
from dlforge.registry import create_model


def test_reference_parameter_arithmetic():
    """SPEC §2: conv1 (3·3·3+1)·32, conv2 (32·3·3+1)·64, conv3, fc1 (128·12·12+1)·512, fc2 — for 48×48×3, 10 classes."""
    rows, total = summary(create_model("cnn"), (3, 48, 48))
    params = {name: n for name, _, _, n in rows}
    shapes = {name: shape for name, _, shape, _ in rows}
    assert params["conv1"] == 896 and params["conv2"] == 18_496 and params["conv3"] == 73_856
    assert params["fc1"] == 9_437_696 and params["fc2"] == 5_130
    assert total == 9_536_074
    assert shapes["conv1"] == (1, 32, 48, 48) and shapes["conv2"] == (1, 64, 48, 48)
    assert shapes["pool1"] == (1, 64, 24, 24) and shapes["pool2"] == (1, 128, 12, 12)


def test_summary_command_prints_layers_and_total(capsys):
    assert main(["summary", "cnn"]) == 0
    out = capsys.readouterr().out
    for text in ("conv1", "896", "18,496", "73,856", "9,437,696", "5,130", "9,536,074", "(B, 64, 24, 24)"):
        assert text in out


@pytest.mark.parametrize("model", ["gpt-tiny", "unet-tiny", "transformer-tiny", "asr-lstm-small", "lstm"])
def test_summary_of_any_model_lists_its_layers_and_its_rows_add_up_to_the_total(model, capsys):
    # before, every model but the image classifiers failed with "unexpected keyword argument 'in_channels'"
    assert main(["summary", model]) == 0
    out = capsys.readouterr().out.splitlines()
    total = sum(p.numel() for p in create_model(model).parameters())
    assert out[-1].split()[-1] == f"{total:,}"
    rows = out[3:-2]  # title, header, rule ... rule, total
    assert len(rows) > 3 and sum(int(r.split()[-1].replace(",", "")) for r in rows) == total
    if model in ("gpt-tiny", "transformer-tiny"):  # the head shares the embedding's matrix: counted once
        assert any(r.split()[:3] == ["head", "Linear", "(tied)"] and r.split()[-1] == "0" for r in rows)


def test_summary_refuses_image_options_for_other_models(capsys):
    assert main(["summary", "gpt-tiny", "--img-size", "28"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dlforge: error: --img-size: applies to image classifiers only; gpt-tiny is not one "
                   "(task: language-model)"]


def test_sizes_are_parameters():
    m = create_model("cnn", in_channels=1, img_size=28, num_classes=43)
    assert m.fc1.in_features == 128 * 7 * 7 and m(torch.zeros(2, 1, 28, 28)).shape == (2, 43)
    assert isinstance(m, MyNet)


def test_no_softmax_in_the_model():
    m = create_model("cnn", img_size=16).eval()
    out = m(torch.randn(3, 3, 16, 16))
    assert not torch.allclose(out.sum(1), torch.ones(3))  # raw logits


def _reference_order(m: MyNet, x: torch.Tensor) -> torch.Tensor:
    """MY_NET as the reference writes it: each ReLU before its max-pool, no gradient reordering (no dropout: p = 0).
    The convolutions are the model's own (their weight gradients: tests/models/test_conv.py)."""
    x = m.pool1(F.relu(conv3x3(m.conv2, F.relu(m.conv1(x)))))
    x = m.pool2(F.relu(conv3x3(m.conv3, x)))
    x = torch.flatten(x, 1)
    return m.fc2(F.relu(m.fc1(x)))


def test_pool_before_relu_is_the_same_arithmetic_forward_and_backward():
    """The model pools before each ReLU and reorders pool2's gradient: outputs and every gradient must equal
    the reference's order exactly, contiguous and channels-last, with ReLU's zeros and the pools' ties in play."""
    torch.manual_seed(0)
    for channels_last in (False, True):
        m = create_model("cnn", img_size=16, dropout=0.0).train()
        x = torch.randn(4, 3, 16, 16)
        x[0] = 0.0  # whole windows of zeros and of equal values
        if channels_last:
            m, x = m.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        out = {}
        for name, fn in (("ours", m), ("reference", lambda t: _reference_order(m, t))):
            xi = x.clone().requires_grad_(True)
            y = fn(xi)
            grads = torch.autograd.grad(y.square().sum(), [xi, *m.parameters()])
            out[name] = (y, grads)
        assert torch.equal(out["ours"][0], out["reference"][0])
        for a, b in zip(out["ours"][1], out["reference"][1]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("argv, says", [(["cnn", "--in-channels", "0"], "--in-channels: expected 1..100,000, got 0"),
                                        (["cnn", "--num-classes", "-1"], "--num-classes: expected 1..100,000, got -1"),
                                        (["mlp", "--num-classes", "-2"], "--num-classes: expected 1..100,000, got -2"),
                                        (["cnn-small", "--img-size", "0"], "--img-size: expected 1..1,024, got 0")])
def test_summary_refuses_image_sizes_out_of_range_in_one_line(argv, says, capsys):
    # before: torch's RuntimeError (0 channels, a negative dimension) as a traceback, exit 1
    assert main(["summary", *argv]) == 2
    assert capsys.readouterr().err == f"dlforge: error: {says}\n"

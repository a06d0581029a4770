"""dlforge.models.conv: the 3×3 convolution whose CPU weight gradient is an im2col matrix product."""
import pytest
import torch
import torch.nn.functional as F

import dlforge.models.conv
from dlforge.models.conv import conv3x3


@pytest.fixture
def gemm(monkeypatch):
    """The product on any CPU (by default only on AVX2 ones, where it was measured to win)."""
    monkeypatch.setattr(dlforge.models.conv, "gemm_weight_grad", lambda: True)


def _grads(fn, conv, x):
    x = x.clone().requires_grad_(True)
    y = fn(conv, x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(memory_format=torch.channels_last)
    return (y, *torch.autograd.grad(y, [x, conv.weight, conv.bias], g))


@pytest.mark.parametrize("batch", [1, 3, 4])  # odd batches: the last product has one image
def test_the_gradients_equal_torchs_convolution(gemm, batch):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 16, 5, 7).to(memory_format=torch.channels_last)    # not square: rows and columns kept apart
    ours = _grads(conv3x3, conv, x)
    theirs = _grads(lambda c, t: c(t), conv, x)
    assert ours[0].grad_fn.name() != theirs[0].grad_fn.name()  # the product did run, not torch's convolution
    c64 = torch.nn.Conv2d(16, 8, 3, padding=1).double()
    c64.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
    exact = _grads(lambda c, t: c(t), c64, x.double())
    for a, b, e in zip(ours, theirs, exact):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        # no less accurate than torch's own fp32 gradient against the float64 one, give or take 1e-6 of the
        # largest value (8 float32 ulps): on an AVX-512 EPYC (Zen 4) torch's came within 4.1e-6 and 4.7e-6 of it
        # (values near 25) and the product within 1.1e-5 and 2.5e-5, the same summation error of 140 terms
        assert (a.double() - e).abs().max() <= 2 * (b.double() - e).abs().max() + 1e-6 * max(1.0, e.abs().max())


def test_the_weight_gradient_repeats_exactly_and_keeps_the_weights_layout(gemm):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(3, 16, 6, 6).to(memory_format=torch.channels_last)
    first, second = _grads(conv3x3, conv, x), _grads(conv3x3, conv, x)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[2].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", ["contiguous", "few channels", "no grad", "stride 2", "AVX-512"])
def test_anything_else_is_torchs_own_convolution(gemm, monkeypatch, case):
    if case == "AVX-512":
        monkeypatch.undo()
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
        dlforge.models.conv.gemm_weight_grad.cache_clear()
        assert not dlforge.models.conv.gemm_weight_grad()
        dlforge.models.conv.gemm_weight_grad.cache_clear()  # later tests ask this CPU again
        monkeypatch.setattr(dlforge.models.conv, "gemm_weight_grad", lambda: False)
    torch.manual_seed(0)
    c_in = 3 if case == "few channels" else 16
    conv = torch.nn.Conv2d(c_in, 8, 3, padding=1, stride=2 if case == "stride 2" else 1)
    x = torch.randn(2, c_in, 6, 6)
    if case != "contiguous":
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    with torch.set_grad_enabled(case != "no grad"):
        y = conv3x3(conv, x)
    assert torch.equal(y, F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, padding=1))
    assert y.grad_fn is None if case == "no grad" else y.grad_fn.name() == "ConvolutionBackward0"

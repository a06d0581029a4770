"""The text-conditioned UNet at tiny size: shapes, gradients into the text encoder, padding invariance."""
import copy

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.registry import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _wake(model):
    """Zero-initialised output layers make a fresh UNet output 0: give them weights to see the inputs' effect."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if p.dim() > 1 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, 0, 0.2)
    return model


@pytest.mark.parametrize("size,patch", [(8, 1), (16, 1), (8, 2)])
def test_shapes_and_gradients_reach_the_text_encoder(size, patch):
    model = _wake(create_model("unet-tiny", vocab_size=12, img_size=size, patch=patch))
    x = torch.randn(3, 1, size, size)
    ids = torch.tensor([[1, 4, 5, 0], [1, 6, 0, 0], [1, 0, 0, 0]])
    eps = model(x, torch.tensor([0, 500, 999]), ids)
    assert eps.shape == x.shape
    eps.pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["text.tok.weight"][4].abs().sum() > 0 and grads["text.tok.weight"][7].abs().sum() == 0  # unused word


def test_the_caption_changes_the_output_and_padding_does_not():
    model = _wake(create_model("unet-tiny", vocab_size=12, img_size=8)).eval()
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([300])
    a = model(x, t, torch.tensor([[1, 4, 5]]))
    assert torch.allclose(a, model(x, t, torch.tensor([[1, 4, 5, 0, 0, 0]])), atol=1e-5)
    assert not torch.allclose(a, model(x, t, torch.tensor([[1, 6, 5]])), atol=1e-3)
    assert not torch.allclose(a, model(x, torch.tensor([700]), torch.tensor([[1, 4, 5]])), atol=1e-3)


def test_channels_last_memory_computes_the_same_noise_and_gradients():
    """The recipe trains and samples the UNet in channels-last memory (faster on the CPU): the same ε and gradients
    as in NCHW memory, to float rounding."""
    a = _wake(create_model("unet-tiny", vocab_size=12, img_size=8))
    b = copy.deepcopy(a).to(memory_format=torch.channels_last)
    assert b.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, ids = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999]), torch.tensor([[1, 4, 5, 0]] * 4)
    ea, eb = a(x, t, ids), b(x, t, ids)
    assert torch.allclose(ea, eb, atol=1e-5)
    ea.pow(2).mean().backward()
    eb.pow(2).mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6, rtol=1e-4), name


def test_external_encoder_states_and_size_checks():
    model = create_model("unet-tiny", img_size=8, context_dim=12)
    assert model.text is None
    assert model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.randn(2, 1, 12)).shape == (2, 1, 8, 8)
    with pytest.raises(DlforgeError, match="not token ids"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([[1, 2]]))
    with pytest.raises(DlforgeError, match="--img-size 10"):
        create_model("unet", img_size=10)
    with pytest.raises(DlforgeError, match="multiple of 4"):
        create_model("unet-fast", img_size=30)  # 2×2 pixel-unshuffle, then one halving
    big = create_model("unet", vocab_size=30, img_size=28)
    assert 1e6 < sum(p.numel() for p in big.parameters()) < 3e6

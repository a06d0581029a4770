"""dlforge's CPU dropout: the keep rate, the scale, its gradient, its seed, and attention's explicit path."""
import pytest
import torch
import torch.nn.functional as F

from dlforge.errors import DlforgeError
from dlforge.models.dropout import Dropout, dropout
from dlforge.models.layers import MultiHeadAttention
from dlforge.registry import create_model


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keeps_one_minus_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    x = torch.rand(1_000_000) + 0.5  # no zeros of its own
    y = dropout(x, p)
    kept = y != 0
    n = x.numel()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sd      # binomial: within 5 standard deviations
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.01       # the expectation is kept


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.3)
    g = torch.randn_like(y)
    y.backward(g)
    mask = (y.detach() / x.detach())  # 0 or 1/(1-p) at every element
    assert torch.allclose(x.grad, g * mask)
    kept = mask != 0
    assert torch.allclose(mask[kept], torch.full_like(mask[kept], 1 / 0.7)) and 0 < kept.float().mean() < 1


def test_identity_off_training_and_at_zero():
    x = torch.randn(5, 7)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    m = Dropout(0.5).eval()
    assert m(x) is x


def test_follows_the_global_seed():
    x = torch.randn(1000)
    torch.manual_seed(7)
    a = dropout(x, 0.5)
    torch.manual_seed(7)
    b = dropout(x, 0.5)
    torch.manual_seed(8)
    c = dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bf16_keeps_its_dtype():
    y = dropout(torch.ones(100, dtype=torch.bfloat16), 0.5)
    assert y.dtype == torch.bfloat16


def test_rejects_a_probability_outside_0_1():
    with pytest.raises(DlforgeError, match="--dropout"):
        Dropout(1.5)


@pytest.mark.parametrize("causal, cross", [(True, False), (False, False), (False, True)])
def test_attention_explicit_path_equals_the_fused_kernel(causal, cross):
    """With dropout on, CPU attention takes the explicit softmax path; with a vanishing p (nothing dropped)
    it must give the fused kernel's output and gradients."""
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4, dropout=1e-12, causal=causal)
    x = torch.randn(3, 9, 32, requires_grad=True)
    ctx = torch.randn(3, 5, 32) if cross else None
    key_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]]) if cross else None
    m.train()
    a = m(x, context=ctx, key_mask=key_mask)
    (ga,) = torch.autograd.grad(a.sum(), x)
    m.eval()
    b = m(x, context=ctx, key_mask=key_mask)
    (gb,) = torch.autograd.grad(b.sum(), x)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ga, gb, atol=1e-5)


def test_gpt_with_dropout_drops_in_training_only():
    torch.manual_seed(0)
    m = create_model("gpt-tiny", vocab_size=11, dropout=0.2)
    idx = torch.randint(11, (2, 16))
    m.eval()
    e1, e2 = m(idx)[0], m(idx)[0]
    m.train()
    t1, t2 = m(idx)[0], m(idx)[0]
    assert torch.equal(e1, e2) and not torch.allclose(t1, t2)
    loss = F.cross_entropy(t1.flatten(0, 1), idx.flatten())
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)

"""The GPT decoder and the shared attention / positional-encoding layers."""
import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.models.layers import MultiHeadAttention, SinusoidalPositions
from dlforge.recipes.language_model import filter_logits, generate_ids
from dlforge.registry import create_model

V, T = 13, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt(**kw):
    torch.manual_seed(0)
    return create_model("gpt-tiny", vocab_size=V, block_size=T, **kw).eval()


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_shapes_and_weight_tying(pos):
    m = _gpt(pos_encoding=pos)
    logits, cache = m(torch.randint(V, (3, T)))
    assert logits.shape == (3, T, V) and cache is None
    assert m.head.weight is m.tok.weight
    assert create_model("gpt-tiny", vocab_size=V, tie_weights=False).head.weight is not None


def test_kv_cache_gives_the_uncached_logits():
    m = _gpt()
    idx = torch.randint(V, (2, T))
    full, _ = m(idx)
    cache = m.init_state(2)
    parts = [m(idx[:, :5], cache)[0]]                       # a prompt of 5, then chunks of 1 and 3, then 1s
    parts.append(m(idx[:, 5:6], cache)[0])
    parts.append(m(idx[:, 6:9], cache)[0])
    parts += [m(idx[:, t:t + 1], cache)[0] for t in range(9, T)]
    assert cache.length == T
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_future_tokens_do_not_change_past_logits():
    m = _gpt()
    a = torch.randint(V, (1, T))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % V
    la, lb = m(a)[0], m(b)[0]
    torch.testing.assert_close(la[:, :10], lb[:, :10])
    assert not torch.allclose(la[:, 10:], lb[:, 10:])


def test_fused_attention_equals_the_explicit_softmax():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 7, 32)
    fused = attn(x)
    attn.keep_weights = True
    explicit = attn(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    w = attn.weights
    assert w.shape == (2, 4, 7, 7) and torch.allclose(w.sum(-1), torch.ones(2, 4, 7))
    assert (w.triu(1) == 0).all()  # causal: nothing above the diagonal


def test_sinusoidal_encoding_matches_the_formula():
    pe = SinusoidalPositions(10, 8).pe
    assert torch.allclose(pe[3, 2], torch.sin(torch.tensor(3 / 10000 ** (2 / 8))))
    assert torch.allclose(pe[3, 3], torch.cos(torch.tensor(3 / 10000 ** (2 / 8))))


def test_longer_than_the_context_is_a_clear_error():
    m = _gpt()
    with pytest.raises(DlforgeError, match="17 tokens is longer than the model's context \\(block_size 16\\)"):
        m(torch.zeros(1, T + 1, dtype=torch.long))
    with pytest.raises(DlforgeError, match="divisible"):
        create_model("gpt-tiny", vocab_size=V, d_model=30, n_head=4)


def test_cached_and_uncached_generation_agree_and_run_past_the_window():
    m = _gpt()
    prompt = torch.randint(V, (1, 4))
    greedy = [list(generate_ids(m, prompt, T - 4, temperature=0, use_cache=c)) for c in (True, False)]
    assert greedy[0] == greedy[1]
    sampled = [list(generate_ids(m, prompt, T - 4, temperature=1.0, seed=5, use_cache=c)) for c in (True, False)]
    assert sampled[0] == sampled[1]
    long = list(generate_ids(m, torch.randint(V, (1, 40)), 3 * T, temperature=1.0, top_k=5))
    assert len(long) == 3 * T and all(0 <= t < V for t in long)  # the prompt and context are cropped


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = filter_logits(logits, top_p=0.8)[0]  # softmax: .64, .24, .09, .03 -> the first two reach .8
    assert torch.isfinite(kept[:2]).all() and torch.isinf(kept[2:]).all()
    assert torch.isfinite(filter_logits(logits, top_p=0.01)[0, 0])  # the most likely token always stays

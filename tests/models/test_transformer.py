"""The GPT decoder and the shared attention / positional-encoding layers."""
import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.models.layers import MultiHeadAttention, SinusoidalPositions, StaticKVCache
from dlforge.models.sampling import draw, pick
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
    assert isinstance(cache, StaticKVCache) and cache.length == T
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


# every registered GPT shape at its own width, depth and context; and the options that change the math
SHAPES = [("gpt-tiny", {}), ("gpt-small", {}), ("gpt", {}),
          ("gpt-tiny", {"pos_encoding": "sinusoidal"}), ("gpt-tiny", {"bias": False, "tie_weights": False})]


@pytest.mark.parametrize("name,kw", SHAPES)
def test_the_decoder_gives_the_uncached_logits_at_every_position(name, kw):
    torch.manual_seed(0)
    m = create_model(name, vocab_size=65, **kw).eval()
    idx = torch.randint(65, (1, m.block_size))                # the whole context: 64, 128, 256 steps
    with torch.inference_mode():
        full, _ = m(idx)
        dec = m.decoder()
        parts = [dec(idx[:, :5]), dec(idx[:, 5:8])] + [dec(idx[:, t:t + 1]) for t in range(8, m.block_size)]
    assert dec.length == m.block_size
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_the_decoder_takes_a_batch():
    m = _gpt()
    idx = torch.randint(V, (3, T))
    with torch.inference_mode():
        dec = m.decoder()
        got = torch.cat([dec(idx[:, :6])] + [dec(idx[:, t:t + 1]) for t in range(6, T)], 1)
        torch.testing.assert_close(got, m(idx)[0], rtol=1e-5, atol=1e-5)


def test_the_single_token_road_follows_the_cache_when_it_remakes_its_buffers():
    """One token of one row takes GPTDecoder._step, with views of the cache's buffers; after a batch of 3
    (new buffers) and back to one row (new again), its steps still give the uncached logits."""
    m = _gpt()
    dec, calls = m.decoder(), []
    step = dec._step
    dec._step = lambda *a: (calls.append(1), step(*a))[1]
    with torch.inference_mode():
        for rows in (1, 3, 1):
            idx = torch.randint(V, (rows, 8))
            dec.reset()
            got = torch.cat([dec(idx[:, :2])] + [dec(idx[:, t:t + 1]) for t in range(2, 8)], 1)
            torch.testing.assert_close(got, m(idx)[0], rtol=1e-5, atol=1e-5)
    assert len(calls) == 12          # the two one-row passes' six single steps each; the batch never


def test_the_decoder_restarts_past_the_window_with_the_uncached_logits_of_its_context():
    """Past block_size the cache restarts from the last block_size/2 tokens, as generate_ids does: each
    step's logits are then the uncached model's over exactly those tokens since the restart."""
    m = _gpt()
    seq = torch.randint(V, (1, 3 * T + 5))
    dec, start = m.decoder(), 0
    with torch.inference_mode():
        got = dec(seq[:, :4])[:, -1]
        for n in range(4, seq.shape[1]):
            torch.testing.assert_close(got, m(seq[:, start:n])[0][:, -1], rtol=1e-5, atol=1e-5)
            if dec.length == T:
                dec.reset()
                start = n + 1 - T // 2
                got = dec(seq[:, start:n + 1])[:, -1]
            else:
                got = dec(seq[:, n:n + 1])[:, -1]
            assert dec.length == n + 1 - start <= T
    with pytest.raises(DlforgeError, match="17 tokens is longer than the model's context \\(block_size 16\\)"):
        m.decoder()(seq[:, :T + 1])


def test_the_static_cache_writes_in_place_and_refuses_to_overflow():
    cache = StaticKVCache(1, 4)
    kv = torch.randn(2, 1, 2, 3, 5)                           # (2, B, H, T, hd)
    k, v = cache.write(0, kv)
    buf = cache.kv[0]
    k2, _ = cache.write(0, torch.randn(2, 1, 2, 1, 5))
    assert cache.kv[0] is buf and k2.data_ptr() == k.data_ptr() and k2.shape == (1, 2, 4, 5)
    torch.testing.assert_close(k2[:, :, :3], kv[0], rtol=0, atol=0)
    with pytest.raises(DlforgeError, match="5 tokens is longer than the cache \\(4 positions\\)"):
        cache.write(0, torch.randn(2, 1, 2, 1, 5))
    cache.reset()
    assert cache.length == 0 and cache.write(0, kv)[0].shape == (1, 2, 3, 5) and cache.kv[0] is buf


def test_cached_generation_steps_call_no_module():
    """Modules run only while the decoder's weights are prepared (the position table), once for these
    parameters, not per token; uncached, every step."""
    m = _gpt()
    calls = []
    hooks = [mod.register_forward_hook(lambda *a: calls.append(1)) for mod in m.modules()]
    counts = []
    for n, cache in ((1, True), (3 * T, True), (1, False), (3, False)):
        calls.clear()
        list(generate_ids(m, torch.randint(V, (1, 4)), n, temperature=1.0, use_cache=cache))
        counts.append(len(calls))
    for h in hooks:
        h.remove()
    assert counts[0] > 0 and counts[1] == 0 and counts[3] == 3 * counts[2] > 0


def test_the_decoder_sees_the_weights_as_they_are_now():
    """The prepared weights are kept on the model, and made again after an optimiser step or a load."""
    m = _gpt()
    idx = torch.randint(V, (1, 6))

    def cached_last():
        dec = m.decoder()
        with torch.inference_mode():
            dec(idx[:, :5])
            return dec(idx[:, 5:])[0, -1]
    first = cached_last()
    assert m.decoder().fast is m.decoder().fast                                    # kept, not rebuilt
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m(idx)[0].square().mean().backward()
    opt.step()
    after_step = cached_last()
    assert not torch.allclose(first, after_step)
    with torch.inference_mode():
        torch.testing.assert_close(after_step, m(idx)[0][0, -1], rtol=1e-5, atol=1e-5)
    m.load_state_dict(_gpt().state_dict())
    torch.testing.assert_close(cached_last(), first, rtol=0, atol=0)


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


def test_past_the_window_cached_greedy_generation_follows_its_restarts():
    """The tokens generate_ids picks with the cache, 3 windows long, are those of the uncached model run over
    the context the cache holds (restarts from the last block_size/2 tokens)."""
    m = _gpt()
    prompt = torch.randint(V, (1, 6))
    got = list(generate_ids(m, prompt, 3 * T, temperature=0))
    seq, start = prompt[0].tolist(), 0
    with torch.inference_mode():
        for _ in range(3 * T):
            if len(seq) - start > T:
                start = len(seq) - T // 2
            seq.append(int(m(torch.tensor([seq[start:]]))[0][0, -1].argmax()))
    assert got == seq[6:]


@pytest.mark.parametrize("use_cache", [True, False])
def test_seeded_generation_is_reproducible(use_cache):
    m = _gpt()
    prompt = torch.randint(V, (1, 3))
    runs = [list(generate_ids(m, prompt, 2 * T, temperature=1.0, top_p=0.9, seed=s, use_cache=use_cache))
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2] and len(runs[0]) == 2 * T


def test_draw_is_torch_multinomial_draw_for_draw():
    probs = torch.rand(300, 3, 65).pow(4).softmax(-1)          # peaked and flat rows
    for i, p in enumerate(probs):
        want = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(i))
        assert torch.equal(draw(p, torch.Generator().manual_seed(i)), want)
    g = torch.Generator().manual_seed(0)
    assert pick(torch.tensor([[0.0, 5.0, 1.0]]), 0, None, None, g).item() == 1   # temperature 0: the argmax
    only = torch.tensor([[0.0, 5.0, 1.0, 4.9]])
    assert {pick(only, 1.0, 1, None, g).item() for _ in range(20)} == {1}       # top-k 1 leaves one token


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = filter_logits(logits, top_p=0.8)[0]  # softmax: .64, .24, .09, .03 -> the first two reach .8
    assert torch.isfinite(kept[:2]).all() and torch.isinf(kept[2:]).all()
    assert torch.isfinite(filter_logits(logits, top_p=0.01)[0, 0])  # the most likely token always stays

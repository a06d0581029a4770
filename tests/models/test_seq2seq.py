"""The encoder–decoder: masks, the decoding caches, greedy and beam search against exhaustive search."""
import itertools

import pytest
import torch

from dlforge.data.pairs import BOS, EOS, PAD
from dlforge.recipes.seq2seq import beam_search, greedy
from dlforge.registry import create_model


def _model(seed=0, vocab=13, max_len=16, **kw):
    torch.manual_seed(seed)
    m = create_model("transformer-tiny", src_vocab_size=vocab, max_len=max_len, **kw).eval()
    for p in m.parameters():  # larger weights than the init: peaked, input-dependent distributions
        p.data.normal_(0, 0.5)
    return m


def test_padding_changes_nothing():
    m = _model()
    src = torch.tensor([[5, 6, 7]])
    tgt = torch.tensor([[BOS, 8, 9]])
    padded = torch.tensor([[5, 6, 7, PAD, PAD]])
    assert torch.allclose(m(src, tgt), m(padded, tgt), atol=1e-5)


def test_decoder_is_causal():
    m = _model()
    src = torch.tensor([[5, 6, 7]])
    a = m(src, torch.tensor([[BOS, 8, 9, 10]]))
    b = m(src, torch.tensor([[BOS, 8, 4, 11]]))
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-5)
    assert not torch.allclose(a[:, 2:], b[:, 2:], atol=1e-3)


def test_cached_decoding_equals_the_full_forward():
    m = _model()
    src = torch.tensor([[5, 6, 7, PAD], [4, 9, 10, 11]])
    tgt = torch.tensor([[BOS, 8, 9, 10, 5], [BOS, 3, 4, 12, 6]])
    full = m(src, tgt)
    memory, cache = m.encode(src), m.init_cache()
    steps = torch.cat([m.decode(tgt[:, t:t + 1], memory, cache) for t in range(tgt.shape[1])], 1)
    assert torch.allclose(full, steps, atol=1e-5)


def test_separate_vocabularies():
    m = create_model("transformer-tiny", src_vocab_size=20, tgt_vocab_size=7)
    assert m(torch.randint(3, 20, (2, 5)), torch.randint(3, 7, (2, 4))).shape == (2, 4, 7)
    assert m.src_tok is not m.tgt_tok


def test_beam_of_one_is_greedy():
    m = _model()
    src = torch.tensor([[5, 6, 7, PAD], [4, 9, 10, 11], [3, 3, PAD, PAD]])
    assert beam_search(m, src, beam=1) == greedy(m, src)


def _score(m, src, seq):
    """Σ log p of seq (then EOS if it is shorter than the budget) under the model."""
    tgt = torch.tensor([[BOS] + seq])
    logp = m(src, tgt).log_softmax(-1)[0]
    full = seq + ([EOS] if len(seq) < 3 else [])
    return sum(float(logp[t, tok].detach()) for t, tok in enumerate(full))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_is_exhaustive_search(seed):
    """max_len 4: at most 3 new tokens from a 6-token vocabulary (3 of them possible outputs besides EOS). A beam as wide as every hypothesis
    with no length penalty must return the sequence of highest probability."""
    m = _model(seed, vocab=6, max_len=4)
    src = torch.tensor([[3, 4, 5]])
    body = [t for t in range(6) if t not in (PAD, BOS, EOS)]
    # hypotheses: up to 2 body tokens then EOS, or 3 tokens without EOS (the budget ran out)
    cands = [list(c) for n in range(3) for c in itertools.product(body, repeat=n)]
    cands += [list(c) for c in itertools.product(body, repeat=3)]
    best = max(cands, key=lambda c: _score(m, src, c))
    found = beam_search(m, src, beam=216, length_penalty=0.0)[0]
    assert found == best
    assert _score(m, src, found) >= _score(m, src, greedy(m, src)[0]) - 1e-6

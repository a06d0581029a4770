"""Recurrent language models: rnn, lstm, gru."""
import pytest
import torch

from dlforge.recipes.language_model import generate_ids
from dlforge.registry import create_model

V = 11


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["rnn-small", "lstm-small", "gru-small"])
def test_state_carries_across_chunks(name):
    """Truncated BPTT relies on this: two halves with the state carried == the whole sequence."""
    torch.manual_seed(0)
    m = create_model(name, vocab_size=V).eval()
    x = torch.randint(V, (3, 20))
    full, state = m(x)
    a, s = m(x[:, :8])
    b, s = m(x[:, 8:], s)
    torch.testing.assert_close(torch.cat([a, b], 1), full)
    assert full.shape == (3, 20, V)
    first = state[0] if isinstance(state, tuple) else state
    assert first.shape == (1, 3, 128)  # (layers, B, hidden)


def test_weight_tying_and_projection():
    m = create_model("lstm", vocab_size=V, d_model=32, n_layer=2, d_embed=16)
    assert m.head.weight is m.embed.weight and m.proj.weight.shape == (16, 32)
    untied = create_model("gru", vocab_size=V, d_model=32, tie_weights=False)
    assert untied.head.weight is not untied.embed.weight
    assert untied(torch.randint(V, (2, 5)))[0].shape == (2, 5, V)


def test_generation_has_no_context_limit_and_is_seeded():
    torch.manual_seed(0)
    m = create_model("gru-small", vocab_size=V)
    prompt = torch.randint(V, (1, 300))
    out = list(generate_ids(m, prompt, 50, temperature=0.9, seed=1))
    assert len(out) == 50 and out == list(generate_ids(m, prompt, 50, temperature=0.9, seed=1))


@pytest.mark.parametrize("name", ["lstm-small", "gpt-tiny"])
def test_a_bf16_autocast_training_step(name):
    from dlforge.train.tasks import LanguageModelTask
    torch.manual_seed(0)
    m = create_model(name, vocab_size=V, block_size=8)
    x = torch.randint(V, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = LanguageModelTask(V).step(m, (x[:, :-1], x[:, 1:], torch.tensor(True)))
    loss.backward()
    assert torch.isfinite(loss) and stats["count"] == 16

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.registry import create_model, entries, list_models

TINY = {"classify": dict(in_channels=3, img_size=8, num_classes=5),
        "denoise": dict(vocab_size=9, img_size=8),
        "language-model": dict(vocab_size=11, block_size=8),
        "seq2seq": dict(src_vocab_size=13, max_len=16, n_enc_layer=1, n_dec_layer=1, n_head=2, d_model=16),
        "speech": dict(vocab_size=7, n_mels=16, d_model=16, n_layer=2)}


def _forward(model, task: str, kw: dict) -> torch.Tensor:
    """A batch of 4 for the task -> the output the loss would read."""
    if task == "seq2seq":
        src, tgt = torch.randint(1, 13, (4, 7)), torch.randint(1, 13, (4, 5))
        logits = model(src, tgt)
        assert logits.shape == (4, 5, 13)
        return logits
    if task == "language-model":
        logits, _ = model(torch.randint(kw["vocab_size"], (4, kw["block_size"])))
        assert logits.shape == (4, kw["block_size"], kw["vocab_size"])
        return logits
    if task == "speech":  # clips of 50 and 33 frames: 13 and 9 output frames, padding never read
        logits, lengths = model(torch.randn(4, 50, 16), torch.tensor([50, 33, 50, 33]))
        assert logits.shape == (4, 13, 8) and lengths.tolist() == [13, 9, 13, 9]
        return torch.cat([logits[0], logits[1, :9]])
    if task == "denoise":
        x = torch.randn(4, 1, kw["img_size"], kw["img_size"])
        eps = model(x, torch.randint(0, 1000, (4,)), torch.tensor([[1, 3, 4, 0]] * 4))
        assert eps.shape == x.shape
        return eps
    out = model(torch.randn(4, kw["in_channels"], kw["img_size"], kw["img_size"]))
    assert out.shape == (4, kw["num_classes"])
    return out


def test_registry_lists_the_families():
    assert {"cnn", "cnn-small", "mlp", "rnn", "lstm", "gru", "gpt", "gpt-tiny", "gpt-small", "lstm-small"} <= set(list_models())


def test_unknown_model_lists_valid_names():
    with pytest.raises(DlforgeError, match="unknown model 'resnet9000'.*cnn.*mlp"):
        create_model("resnet9000")


def test_bad_keyword_is_a_clear_error():
    with pytest.raises(DlforgeError, match="model 'cnn'.*activation"):
        create_model("cnn", activation="relu")


@pytest.mark.parametrize("entry", entries(), ids=lambda e: e.name)
def test_every_model_runs_forward_and_backward(entry):
    kw = TINY[entry.task]
    model = create_model(entry.name, **kw)
    out = _forward(model, entry.task, kw)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

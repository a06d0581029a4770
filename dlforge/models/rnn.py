"""Recurrent language models: embedding -> recurrent stack -> linear head.

h_t = f(x_t, h_{t-1}) with PyTorch's fused cells:
  rnn  — h_t = tanh(W x_t + U h_{t-1} + b) (Elman): gradients vanish over long spans;
  lstm — input/forget/output gates regulate a cell state c_t (Hochreiter & Schmidhuber, 1997);
  gru  — an update gate merges input and forget gates, a reset gate (Cho et al., 2014): cheaper.
ids (B, T), state -> logits (B, T, V), state. Dropout on the embeddings, between layers and before the
head; optional weight tying (Press & Wolf, 2017), through a projection when the sizes differ.
Trained with truncated backpropagation through time: the task carries the state across batches.
"""
from __future__ import annotations

import torch
from torch import nn

from dlforge.errors import DlforgeError
from dlforge.registry import register_model

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None  # (layers, B, H); LSTM: (h, c)


class RNNLM(nn.Module):
    recurrent = True
    block_size = None  # no context limit: the state summarises everything before

    def __init__(self, cell: str, vocab_size: int, d_model: int = 256, n_layer: int = 2, dropout: float = 0.0,
                 tie_weights: bool = True, d_embed: int | None = None):
        super().__init__()
        if min(vocab_size, d_model, n_layer) < 1:
            raise DlforgeError(f"{cell}: vocab_size, width and layers must be at least 1")
        d_embed = d_embed or d_model
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.rnn = CELLS[cell](d_embed, d_model, n_layer, batch_first=True, dropout=dropout if n_layer > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, d_embed, bias=False) if tie_weights and d_embed != d_model else nn.Identity()
        self.head = nn.Linear(d_embed if tie_weights else d_model, vocab_size)
        if tie_weights:
            self.head.weight = self.embed.weight

    def init_state(self, batch_size: int = 1) -> State:
        return None  # zeros, made by the cell itself

    def forward(self, idx: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        x = self.drop(self.embed(idx))       # (B, T, E)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):  # oneDNN has no bf16 LSTM/GRU training: fp32 cells
                out, state = self.rnn(x.float(), state)
        else:
            out, state = self.rnn(x, state)  # (B, T, H); state (layers, B, H)
        return self.head(self.proj(self.drop(out))), state  # (B, T, V)


def _rnn(cell: str, vocab_size: int, block_size: int | None, kw: dict, **defaults) -> RNNLM:
    """block_size is accepted for a uniform interface; for recurrent models it is the loader's
    truncated-BPTT length, not a limit of the model."""
    return RNNLM(cell, vocab_size, **{**defaults, **kw})


@register_model("rnn", task="language-model")
def rnn(vocab_size: int = 65, block_size: int | None = None, **kw) -> RNNLM:
    """Elman RNN (tanh) language model: 2 layers of 256."""
    return _rnn("rnn", vocab_size, block_size, kw)


@register_model("lstm", task="language-model")
def lstm(vocab_size: int = 65, block_size: int | None = None, **kw) -> RNNLM:
    """LSTM language model: 2 layers of 256."""
    return _rnn("lstm", vocab_size, block_size, kw)


@register_model("gru", task="language-model")
def gru(vocab_size: int = 65, block_size: int | None = None, **kw) -> RNNLM:
    """GRU language model: 2 layers of 256."""
    return _rnn("gru", vocab_size, block_size, kw)


@register_model("lstm-small", task="language-model")
def lstm_small(vocab_size: int = 65, block_size: int | None = None, **kw) -> RNNLM:
    """LSTM: 1 layer of 128: tests and quick tries."""
    return _rnn("lstm", vocab_size, block_size, kw, d_model=128, n_layer=1)


@register_model("lstm-large", task="language-model")
def lstm_large(vocab_size: int = 65, block_size: int | None = None, **kw) -> RNNLM:
    """LSTM: 2 layers of 512 (char-rnn's size)."""
    return _rnn("lstm", vocab_size, block_size, kw, d_model=512, n_layer=2)


@register_model("gru-small", task="language-model")
def gru_small(vocab_size: int = 65, block_size: int | None = None, **kw) -> RNNLM:
    """GRU: 1 layer of 128: tests and quick tries."""
    return _rnn("gru", vocab_size, block_size, kw, d_model=128, n_layer=1)


@register_model("rnn-small", task="language-model")
def rnn_small(vocab_size: int = 65, block_size: int | None = None, **kw) -> RNNLM:
    """Elman RNN: 1 layer of 128: tests and quick tries."""
    return _rnn("rnn", vocab_size, block_size, kw, d_model=128, n_layer=1)

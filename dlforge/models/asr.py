"""Speech recognition: log-mel frames -> convolutional front-end -> bidirectional LSTM/GRU -> characters + CTC blank.

features (B, T, n_mels), lengths (B,) -> logits (B, T', V + 1), lengths' (B,) with T' = ⌈T / 4⌉:
  two 3x3 convolutions of stride 2 over (time, mel) (as Deep Speech 2, Amodei et al., 2016) subsample time by 4
  (40 ms per output frame); a linear layer to the recurrent width; a stack of bidirectional LSTM or GRU layers
  (over the padded batch: see `packed`); dropout; a linear layer over the
  characters, index 0 the CTC blank (Graves et al., 2006).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dlforge.errors import DlforgeError
from dlforge.registry import register_model

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def conv_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after the front-end: each stride-2 convolution (kernel 3, padding 1) maps L to ⌊(L - 1) / 2⌋ + 1."""
    for _ in range(2):
        lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
    return lengths


class SpeechRecognizer(nn.Module):
    subsampling = 4
    # packed sequences keep padding out of the backward direction exactly, but oneDNN's LSTM runs them at half
    # the speed on CPU (measured: 0.79 against 0.41 s per training batch of 32 clips of 2.9 s, asr-lstm);
    # batches are length-bucketed and inference runs clips alone or with clips of similar length, so the
    # padding is a few frames at most: unpacked by default
    packed = False

    def __init__(self, cell: str = "lstm", vocab_size: int = 40, n_mels: int = 80, channels: int = 32,
                 d_model: int = 256, n_layer: int = 3, dropout: float = 0.1):
        super().__init__()
        if cell not in CELLS:
            raise DlforgeError(f"cell: expected one of {', '.join(CELLS)}, got {cell!r}")
        if min(vocab_size, n_mels, channels, d_model, n_layer) < 1:
            raise DlforgeError("asr: vocab_size, n_mels, channels, width and layers must be at least 1")
        self.cell, self.vocab_size, self.n_mels = cell, vocab_size, n_mels
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2, 1), nn.GELU(),
                                  nn.Conv2d(channels, channels, 3, 2, 1), nn.GELU())
        mels_out = (n_mels + 3) // 4
        self.proj = nn.Linear(channels * mels_out, d_model)
        self.rnn = CELLS[cell](d_model, d_model, n_layer, batch_first=True, bidirectional=True,
                               dropout=dropout if n_layer > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * d_model, vocab_size + 1)            # + 1: the blank, index 0

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """lengths None: every clip is T frames long (no packing: what the ONNX graph runs)."""
        h = self.conv(x.unsqueeze(1))                                 # (B, C, T', M')
        h = self.drop(self.proj(h.permute(0, 2, 1, 3).flatten(2)))    # (B, T', d)
        if h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):  # oneDNN has no bf16 LSTM/GRU training: fp32 cells
                return self._recur(h.float(), lengths)
        return self._recur(h, lengths)

    def _recur(self, h: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            out, _ = self.rnn(h)
            return self.head(self.drop(out)), torch.full((h.shape[0],), h.shape[1], dtype=torch.long)
        out_len = conv_lengths(lengths).clamp(max=h.shape[1])
        if not self.packed:  # the few padded frames of a length-bucketed batch enter the backward direction
            out, _ = self.rnn(h)
            return self.head(self.drop(out)), out_len
        out, _ = self.rnn(pack_padded_sequence(h, out_len.cpu(), batch_first=True, enforce_sorted=False))
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])  # (B, T', 2d)
        return self.head(self.drop(out)), out_len                     # (B, T', V + 1)


def _asr(cell: str, kw: dict, **defaults) -> SpeechRecognizer:
    return SpeechRecognizer(cell, **{**defaults, **kw})


@register_model("asr-lstm", task="speech")
def asr_lstm(**kw) -> SpeechRecognizer:
    """Speech recognizer: conv front-end (time / 4), 3 bidirectional LSTM layers of 256, CTC over characters."""
    return _asr("lstm", kw)


@register_model("asr-gru", task="speech")
def asr_gru(**kw) -> SpeechRecognizer:
    """Speech recognizer: conv front-end (time / 4), 3 bidirectional GRU layers of 256, CTC over characters."""
    return _asr("gru", kw)


@register_model("asr-lstm-small", task="speech")
def asr_lstm_small(**kw) -> SpeechRecognizer:
    """Speech recognizer: 2 bidirectional LSTM layers of 128 over 40 mel bands: tests and quick tries."""
    return _asr("lstm", kw, d_model=128, n_layer=2, n_mels=40, channels=16)


@register_model("asr-gru-small", task="speech")
def asr_gru_small(**kw) -> SpeechRecognizer:
    """Speech recognizer: 2 bidirectional GRU layers of 128 over 40 mel bands: tests and quick tries."""
    return _asr("gru", kw, d_model=128, n_layer=2, n_mels=40, channels=16)

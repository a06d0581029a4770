"""Blocks shared by the Transformer families: multi-head attention with a key/value cache, positional
encodings (learned or sinusoidal) and the position-wise feed-forward network (Vaswani et al., 2017)."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from dlforge.errors import DlforgeError
from dlforge.models.dropout import Dropout, dropout


class KVCache:
    """Keys and values of the tokens already seen, per layer, each (B, heads, T_past, head_dim): a
    decoder then runs only the new tokens through the network, attending to the cached past."""

    def __init__(self, n_layers: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.layers[0] is None else self.layers[0][0].shape[2]

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's (B, H, T, hd) keys/values to layer i's; -> all of them (B, H, T_past + T, hd)."""
        if self.layers[i] is not None:
            k, v = torch.cat([self.layers[i][0], k], 2), torch.cat([self.layers[i][1], v], 2)
        self.layers[i] = (k, v)
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` of the batch (beam search: the surviving hypotheses' pasts)."""
        self.layers = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                       for kv in self.layers]


class StaticKVCache:
    """A KVCache preallocated for `capacity` positions: per layer one (2, B, heads, capacity, head_dim) buffer
    that each step writes in place. Appending to a growing cache (KVCache) copies the whole past at every step,
    O(T) per token; here a step copies only its own keys and values and reads the past as a view."""

    def __init__(self, n_layers: int, capacity: int):
        self.capacity = capacity
        self.kv: list[torch.Tensor | None] = [None] * n_layers  # (2, B, H, capacity, hd), made at the first write
        self.lengths = [0] * n_layers

    @property
    def length(self) -> int:
        return self.lengths[0]

    def reset(self) -> None:
        """Empty again, keeping the buffers."""
        self.lengths = [0] * len(self.lengths)

    def write(self, i: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (2, B, H, T, hd) keys/values at layer i's next T positions; -> views of all of
        them, 2 × (B, H, T_past + T, hd)."""
        n, T = self.lengths[i], kv.shape[3]
        if n + T > self.capacity:
            raise DlforgeError(f"a sequence of {n + T} tokens is longer than the cache ({self.capacity} positions)")
        buf = self.kv[i]
        if buf is None or (n == 0 and (buf.shape[1:3] != kv.shape[1:3] or buf.dtype != kv.dtype
                                       or buf.device != kv.device)):
            buf = self.kv[i] = kv.new_zeros(*kv.shape[:3], self.capacity, kv.shape[4])
        buf[:, :, :, n:n + T] = kv
        self.lengths[i] = n + T
        return buf[0, :, :, :n + T], buf[1, :, :, :n + T]

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KVCache.update's contract: (B, H, T, hd) keys/values in -> all of layer i's (B, H, T_past + T, hd)."""
        return self.write(i, torch.stack([k, v]))

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` of the batch (beam search: the surviving hypotheses' pasts)."""
        self.kv = [None if b is None else b.index_select(1, index) for b in self.kv]


class MultiHeadAttention(nn.Module):
    """softmax(Q Kᵀ / √d_head + mask) V in `n_heads` heads of d_model / n_heads, then an output projection.
    Self-attention by default; cross-attention when `context` (the encoder's output) is given.
    causal: position t attends to positions ≤ t only. keep_weights: also store the attention
    probabilities (B, H, T, S) in .weights (an explicit softmax instead of the fused kernel)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, causal: bool = True, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise DlforgeError(f"--width {d_model} is not divisible by --heads {n_heads}")
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.q = nn.Linear(d_model, d_model, bias=bias)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.keep_weights, self.weights = False, None

    def _mask(self, T: int, S: int, device: torch.device) -> torch.Tensor | None:
        """(T, S) boolean, True = may attend: query t (absolute position S - T + t) sees keys ≤ itself."""
        if not self.causal or T == 1:
            return None
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)

    def keys_values(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, C) -> keys, values 2 × (B, H, S, hd): computed once per source sentence for
        cross-attention and passed back as `kv` at every decoding step."""
        B, S, C = src.shape
        k, v = self.kv(src).view(B, S, 2, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0, key_mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # x: (B, T, C) -> (B, T, C)
        """context: attend to it (cross-attention); kv: its precomputed keys_values(); key_mask (B, S):
        True for real keys, False for padding (never attended to)."""
        B, T, C = x.shape
        H = self.n_heads
        q = self.q(x).view(B, T, H, C // H).transpose(1, 2)                              # (B, H, T, hd)
        cross = context is not None or kv is not None
        k, v = kv if kv is not None else self.keys_values(x if context is None else context)  # (B, H, S, hd)
        if cache is not None:
            k, v = cache.update(layer, k, v)                                             # (B, H, S_past + S, hd)
        S = k.shape[2]
        mask = None if cross else self._mask(T, S, x.device)
        if key_mask is not None:                                                         # (B, 1, 1, S)
            mask = key_mask[:, None, None, :] if mask is None else mask & key_mask[:, None, None, :]
        p = self.dropout if self.training else 0.0
        if self.keep_weights or (p and x.device.type == "cpu"):
            # explicit softmax: to keep the weights, or for dropout on the CPU, where the fused kernel has none and
            # its fallback draws a slow mask (dlforge.models.dropout): a gpt-small training step with dropout 0.1,
            # 428 ms against 470 (benchmarks/dropout.py)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)                          # (B, H, T, S)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = att.softmax(-1)
            if self.keep_weights:
                self.weights = att
            y = dropout(att, p) @ v
        elif not cross and key_mask is None and self.causal and T == S and T > 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class LearnedPositions(nn.Module):
    """A trained vector per position (GPT-2): positions (T,) -> (T, C)."""

    def __init__(self, block_size: int, d_model: int):
        super().__init__()
        self.emb = nn.Embedding(block_size, d_model)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.emb(pos)


class SinusoidalPositions(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/C)), PE(pos, 2i+1) = cos(...) (Vaswani et al.): fixed, no parameters."""

    def __init__(self, block_size: int, d_model: int):
        super().__init__()
        pos = torch.arange(block_size).float()[:, None]                               # (T, 1)
        freq = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))  # (C/2,)
        pe = torch.zeros(block_size, d_model)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.pe[pos]


POSITIONAL = {"learned": LearnedPositions, "sinusoidal": SinusoidalPositions}


def positional_encoding(kind: str, block_size: int, d_model: int) -> nn.Module:
    if kind not in POSITIONAL:
        raise DlforgeError(f"--pos-encoding: expected one of {', '.join(POSITIONAL)}; got {kind!r}")
    return POSITIONAL[kind](block_size, d_model)


class FeedForward(nn.Sequential):
    """Position-wise MLP: Linear(C, 4C) -> GELU -> Linear(4C, C) -> dropout."""

    def __init__(self, d_model: int, dropout: float = 0.0, bias: bool = True, mult: int = 4):
        super().__init__(nn.Linear(d_model, mult * d_model, bias=bias), nn.GELU(),
                         nn.Linear(mult * d_model, d_model, bias=bias), Dropout(dropout))

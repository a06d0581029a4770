"""A GPT-style decoder-only Transformer language model (Radford et al., 2018/2019; nanoGPT).

ids (B, T) -> token embedding + positional encoding -> n_layer pre-LayerNorm blocks
[x + attn(LN(x)), x + mlp(LN(x))] with causal multi-head self-attention -> LN -> linear head whose
weight is the token embedding's (weight tying) -> logits (B, T, V).
With a KVCache, only new tokens are computed: the logits are those of the full sequence, bit for bit
up to float rounding (tests/models/test_transformer.py).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dlforge.errors import DlforgeError
from dlforge.models.layers import FeedForward, KVCache, MultiHeadAttention, positional_encoding
from dlforge.registry import register_model


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = MultiHeadAttention(d_model, n_head, dropout, causal=True, bias=bias)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = FeedForward(d_model, dropout, bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None, i: int) -> torch.Tensor:  # (B, T, C)
        x = x + self.drop(self.attn(self.ln1(x), cache=cache, layer=i))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    recurrent = False

    def __init__(self, vocab_size: int, block_size: int = 256, n_layer: int = 6, n_head: int = 6, d_model: int = 384,
                 dropout: float = 0.0, pos_encoding: str = "learned", tie_weights: bool = True, bias: bool = True):
        super().__init__()
        if min(vocab_size, block_size, n_layer, n_head, d_model) < 1:
            raise DlforgeError("gpt: vocab_size, block_size, layers, heads and width must be at least 1")
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = positional_encoding(pos_encoding, block_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.tok.weight  # one V×C matrix reads tokens in and scores them out
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/√(2·n_layer)
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def init_state(self, batch_size: int = 1) -> KVCache:
        """An empty key/value cache for incremental decoding."""
        return KVCache(len(self.blocks))

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache | None]:
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.block_size:
            raise DlforgeError(f"a sequence of {past + T} tokens is longer than the model's context "
                               f"(block_size {self.block_size})")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        return self.head(self.ln_f(x)), cache          # (B, T, V)

    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every layer for one sequence: n_layer × (heads, T, T)."""
        attns = [b.attn for b in self.blocks]
        for a in attns:
            a.keep_weights = True
        try:
            with torch.no_grad():
                self(idx[None, -self.block_size:])
            return [a.weights[0].cpu() for a in attns]
        finally:
            for a in attns:
                a.keep_weights, a.weights = False, None


# ---------------------------------------------------------------- registered variants
@register_model("gpt", task="language-model")
def gpt(vocab_size: int = 65, block_size: int = 256, **kw) -> GPT:
    """GPT decoder: 6 layers, 6 heads, 384 wide (nanoGPT's shakespeare-char); all sizes configurable."""
    return GPT(vocab_size, block_size, **kw)


@register_model("gpt-tiny", task="language-model")
def gpt_tiny(vocab_size: int = 65, block_size: int = 64, **kw) -> GPT:
    """GPT: 2 layers, 2 heads, 64 wide: tests and quick tries."""
    return GPT(vocab_size, block_size, **{"n_layer": 2, "n_head": 2, "d_model": 64, **kw})


@register_model("gpt-small", task="language-model")
def gpt_small(vocab_size: int = 65, block_size: int = 128, **kw) -> GPT:
    """GPT: 4 layers, 4 heads, 192 wide: the 10-minute CPU recipe."""
    return GPT(vocab_size, block_size, **{"n_layer": 4, "n_head": 4, "d_model": 192, **kw})

"""The Transformer family: a GPT-style decoder-only language model (Radford et al., 2018/2019; nanoGPT)
and the encoder–decoder of "Attention Is All You Need" (Vaswani et al., 2017) for sequence-to-sequence.

GPT:

ids (B, T) -> token embedding + positional encoding -> n_layer pre-LayerNorm blocks
[x + attn(LN(x)), x + mlp(LN(x))] with causal multi-head self-attention -> LN -> linear head whose
weight is the token embedding's (weight tying) -> logits (B, T, V).
With a KVCache, only new tokens are computed: the logits are those of the full sequence, bit for bit
up to float rounding (tests/models/test_transformer.py). Generation runs GPTDecoder: the same
arithmetic on the same weights with a StaticKVCache written in place and no module calls.

Encoder–decoder (`transformer`):
src (B, S) -> embedding·√C + sinusoidal positions -> N encoder blocks [x + self-attn(LN(x)), x + FF(LN(x))]
with a padding mask -> LN -> memory (B, S, C).
tgt (B, T) -> embedding·√C + positions -> N decoder blocks [y + causal self-attn(LN(y)),
y + cross-attn(LN(y), memory), y + FF(LN(y))] -> LN -> linear head -> logits (B, T, V_tgt).
Pre-LayerNorm (Xiong et al., 2020) rather than the paper's post-LN: it trains without a long warm-up.
With one shared vocabulary the source embedding, target embedding and output head are one matrix
(the paper's three-way tying). Decoding keeps the memory's cross-attention keys/values and the
decoder's own keys/values in caches, so each step runs one new token per hypothesis.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlforge.errors import DlforgeError
from dlforge.models.dropout import Dropout
from dlforge.models.layers import FeedForward, KVCache, MultiHeadAttention, StaticKVCache, positional_encoding
from dlforge.registry import register_model


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = MultiHeadAttention(d_model, n_head, dropout, causal=True, bias=bias)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = FeedForward(d_model, dropout, bias)
        self.drop = Dropout(dropout)

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
        self.drop = Dropout(dropout)
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

    def init_state(self, batch_size: int = 1) -> StaticKVCache:
        """An empty key/value cache for incremental decoding, room for block_size positions."""
        return StaticKVCache(len(self.blocks), self.block_size)

    def decoder(self) -> "GPTDecoder":
        """What generation steps: decoder(ids) -> logits, the past kept in its own cache."""
        return GPTDecoder(self)

    def forward(self, idx: torch.Tensor, cache: KVCache | StaticKVCache | None = None
                ) -> tuple[torch.Tensor, KVCache | StaticKVCache | None]:
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        _check_length(past + T, self.block_size)
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


def _check_length(n: int, block_size: int) -> None:
    if n > block_size:
        raise DlforgeError(f"a sequence of {n} tokens is longer than the model's context (block_size {block_size})")


class GPTDecoder:
    """GPT.forward for generation: decoder(ids (B, T)) -> logits (B, T, V) of the new tokens given all the
    tokens fed since reset(); equal to the uncached logits up to float rounding (tests/models/test_transformer.py).

    At batch 1 a step of a small GPT is a few dozen tiny kernels, and the Python around them (module calls,
    branches, a torch.cat of the whole past per layer) cost more than the arithmetic (benchmarks/generation.py).
    So this runs each block's math straight on the model's weights: F.layer_norm, one fused (3C, C) q/k/v
    projection (the two matrices of MultiHeadAttention stacked once), F.scaled_dot_product_attention over a
    StaticKVCache written in place, F.linear. Eval mode: no dropout.

    One token of one row (every generation step) takes a shorter road, _step: 13 ATen calls per block and
    nothing else, each chosen against the obvious call by measurement at batch 1 (benchmarks/generation.py):
    - the weights transposed and contiguous, (in, out): addmm(x, W_t) streams W_t along its rows, 35-40%
      faster than F.linear's (out, in) matrix-vector product while the weights stay in cache (gpt-tiny), even
      (±6%) once they stream from memory (gpt-small, gpt: there the bandwidth sets the pace);
    - the biases of the attention's and the MLP's output as one more row of their matrices, against a 1 kept
      at the end of the input row, and the residual added in place (x.addmm_): no separate bias or residual add;
    - the exact GELU as ½·(h + h·erf(h/√2)) in three calls, the ½ folded into the MLP's second matrix (a power of
      two: exact): aten's gelu costs ~15 µs on a 768-wide row, erf ~1.5 µs;
    - attention for one query as two torch.bmm over the heads and a softmax, the 1/√hd folded into the query's
      weights: F.scaled_dot_product_attention's checks and backend choice cost more than its arithmetic;
    - every intermediate in a buffer of this decoder (out=), and the cache's write target and key/value views made
      once per position: no allocation and no slicing per step.
    The prepared weights are kept on the model and made again when a parameter is replaced or changed in place
    (an optimiser step, load_state_dict: tensor versions), so a decoder per request costs no copy."""

    def __init__(self, model: GPT):
        self.block_size, self.n_head = model.block_size, model.blocks[0].attn.n_heads
        self.d_model = C = model.tok.weight.shape[1]
        w = _decoder_weights(model)
        self.tok, self.pos, self.head, self.ln_f = w["tok"], w["pos"], w["head"], w["ln_f"]
        self.layers, self.fast, self.head_t, self.inv_sqrt2 = w["layers"], w["fast"], w["head_t"], w["inv_sqrt2"]
        self.cache = StaticKVCache(len(self.layers), model.block_size)
        H, hd, hidden, new = self.n_head, C // self.n_head, self.fast[0][4].shape[1], self.tok.new_empty
        self._x, self._qkv = new(1, C), new(1, 3 * C)
        self._y, self._h = new(1, C + 1).fill_(1.0), new(1, hidden + 1).fill_(1.0)  # ..., 1: the bias rows' input
        self._q, self._kv = self._qkv[:, :C].view(H, 1, hd), self._qkv[:, C:].view(2, 1, H, 1, hd)
        self._y_heads, self._h_row = self._y[:, :C].view(H, 1, hd), self._h[:, :hidden]
        self._views: list = []           # per layer and position: (write target, K^T, V) of _viewed's buffers
        self._viewed: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.cache.length

    def reset(self) -> None:
        self.cache.reset()

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        B, T = idx.shape
        C, H, n = self.d_model, self.n_head, self.cache.length
        _check_length(n + T, self.block_size)
        if B * T == 1 and n > 0 and self.cache.kv[0].shape[1] == 1:
            return self._step(idx, n)
        # query t (position n + t) sees keys ≤ n + t; one new token sees them all
        mask = None if T == 1 else torch.ones(T, n + T, dtype=torch.bool, device=idx.device).tril(n)
        x = F.embedding(idx, self.tok) + self.pos[n:n + T]                                       # (B, T, C)
        for i, (ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_1, b_1, w_2, b_2) in enumerate(self.layers):
            qkv = F.linear(F.layer_norm(x, (C,), *ln1), w_qkv, b_qkv)                              # (B, T, 3C)
            # (3, B, H, T, hd); one token of one row is already in that order: a view, one call fewer
            qkv = qkv.view(3, 1, H, 1, C // H) if B * T == 1 else qkv.view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
            k, v = self.cache.write(i, qkv[1:])                                          # 2 × (B, H, n + T, hd)
            y = F.scaled_dot_product_attention(qkv[0], k, v, attn_mask=mask)              # (B, H, T, hd)
            x = x + F.linear((y if T == 1 else y.transpose(1, 2)).reshape(B, T, C), w_o, b_o)  # heads side by side
            x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, (C,), *ln2), w_1, b_1)), w_2, b_2)
        return F.linear(F.layer_norm(x, (C,), *self.ln_f), self.head)

    def _step(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """One token (1, 1) at position n after a prefill of this cache -> logits (1, 1, V)."""
        C, kv = self.d_model, self.cache.kv
        if kv[0] is not self._viewed:  # the cache (re)made its buffers (a first prefill, another batch size)
            self._views = [[(b[:, :, :, p:p + 1], b[0, 0, :, :p + 1].transpose(1, 2), b[1, 0, :, :p + 1])
                            for p in range(self.block_size)] for b in kv]
            self._viewed = kv[0]
        x, qkv, q, new_kv, y, y_heads, h, h_row = (self._x, self._qkv, self._q, self._kv, self._y, self._y_heads,
                                                   self._h, self._h_row)
        torch.index_select(self.tok, 0, idx.view(1), out=x).add_(self.pos[n])                    # (1, C)
        for views, (ln1, w_qkv, b_qkv, w_o, w_1, b_1, w_2, ln2) in zip(self._views, self.fast):
            torch.addmm(b_qkv, F.layer_norm(x, (C,), *ln1), w_qkv, out=qkv)                      # (1, 3C)
            slot, k_t, v = views[n]                                     # (2, 1, H, 1, hd), (H, hd, n+1), (H, n+1, hd)
            slot.copy_(new_kv)
            torch.bmm(torch.bmm(q, k_t).softmax(-1), v, out=y_heads)                              # (H, 1, hd)
            x.addmm_(y, w_o)                                                      # x += [y, 1]·[W_o^T; b_o]
            torch.addmm(b_1, F.layer_norm(x, (C,), *ln2), w_1, out=h_row)                         # (1, 4C)
            h_row.addcmul_(h_row, torch.mul(h_row, self.inv_sqrt2).erf_())                       # 2·GELU(h)
            x.addmm_(h, w_2)                                                      # x += [2·GELU(h), 1]·[½W_2^T; b_2]
        self.cache.lengths = [n + 1] * len(kv)
        return torch.mm(F.layer_norm(x, (C,), *self.ln_f), self.head_t).view(1, 1, -1)


def _decoder_weights(model: GPT) -> dict:
    """The weights GPTDecoder runs on, made once per set of parameter values and kept on the model."""
    params = list(model.parameters())
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    kept = model.__dict__.get("_decoder_kept")
    if kept is not None and kept[0] == key:
        return kept[1]
    d = lambda t: None if t is None else t.detach()  # noqa: E731  detached: no autograd graph
    tok = d(model.tok.weight)
    with torch.no_grad():
        pos = model.pos(torch.arange(model.block_size, device=tok.device))  # (block_size, C)
        C, H = tok.shape[1], model.blocks[0].attn.n_heads
        t, zero = (lambda w: w.t().contiguous()), (lambda n: tok.new_zeros(n))
        scale = tok.new_ones(3 * C)
        scale[:C] = (C // H) ** -0.5  # the attention's 1/√hd, folded into the query's columns
        layers, fast = [], []
        for b in model.blocks:
            a, fc1, fc2 = b.attn, b.mlp[0], b.mlp[2]
            qkv_w = torch.cat([d(a.q.weight), d(a.kv.weight)])                     # (3C, C): q, then k and v
            qkv_b = None if a.q.bias is None else torch.cat([d(a.q.bias), d(a.kv.bias)])
            ln1, ln2 = (d(b.ln1.weight), d(b.ln1.bias), b.ln1.eps), (d(b.ln2.weight), d(b.ln2.bias), b.ln2.eps)
            layer = (ln1, qkv_w, qkv_b, d(a.proj.weight), d(a.proj.bias), ln2,
                     d(fc1.weight), d(fc1.bias), d(fc2.weight), d(fc2.bias))
            layers.append(layer)
            _, _, _, w_o, b_o, _, w_1, b_1, w_2, b_2 = layer
            bias = lambda b, n: zero(n) if b is None else b  # noqa: E731  +0 is exact
            fast.append((ln1, t(qkv_w) * scale, bias(qkv_b, 3 * C) * scale,
                         torch.cat([t(w_o), bias(b_o, C)[None]]),                                     # (C + 1, C)
                         t(w_1), bias(b_1, w_1.shape[0]), torch.cat([t(w_2) * 0.5, bias(b_2, C)[None]]),  # (4C + 1, C)
                         ln2))
        head = d(model.head.weight)
        w = {"tok": tok, "pos": pos, "head": head, "head_t": t(head),
             "ln_f": (d(model.ln_f.weight), d(model.ln_f.bias), model.ln_f.eps), "layers": layers, "fast": fast,
             "inv_sqrt2": tok.new_tensor(0.5 ** 0.5)}  # a tensor: a Python float is cast on every call
    model.__dict__["_decoder_kept"] = (key, w)
    return w


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


# ---------------------------------------------------------------- encoder–decoder
class EncoderBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, mult: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_head, dropout, causal=False)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, dropout, mult=mult)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:  # (B, S, C), (B, S)
        x = x + self.drop(self.attn(self.ln1(x), key_mask=src_mask))
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, mult: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_head, dropout, causal=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.cross = MultiHeadAttention(d_model, n_head, dropout, causal=False)
        self.ln3 = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, dropout, mult=mult)
        self.drop = Dropout(dropout)

    def forward(self, y: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], src_mask: torch.Tensor,
                cache: KVCache | None, i: int) -> torch.Tensor:  # (B, T, C)
        y = y + self.drop(self.attn(self.ln1(y), cache=cache, layer=i))
        y = y + self.drop(self.cross(self.ln2(y), kv=memory_kv, key_mask=src_mask))
        return y + self.mlp(self.ln3(y))


class Memory:
    """What decoding needs from the encoder, computed once per batch of sources: the padding mask
    (B, S) and each decoder layer's cross-attention keys/values 2 × (B, H, S, hd)."""

    def __init__(self, src_mask: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]]):
        self.src_mask, self.kv = src_mask, kv

    def select(self, index: torch.Tensor) -> "Memory":
        """Rows `index` (beam search: every source repeated once per beam)."""
        return Memory(self.src_mask.index_select(0, index),
                      [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv])


class EncoderDecoder(nn.Module):
    recurrent = False

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int | None = None, max_len: int = 128,
                 n_enc_layer: int = 3, n_dec_layer: int = 3, n_head: int = 4, d_model: int = 256,
                 dropout: float = 0.1, pad_id: int = 0, ff_mult: int = 4):
        super().__init__()
        tgt_vocab_size = tgt_vocab_size or src_vocab_size
        if min(src_vocab_size, tgt_vocab_size, max_len, n_enc_layer, n_dec_layer, n_head, d_model) < 1:
            raise DlforgeError("transformer: vocabulary sizes, max_len, layers, heads and width must be at least 1")
        self.max_len, self.pad_id, self.d_model = max_len, pad_id, d_model
        self.shared_vocab = tgt_vocab_size == src_vocab_size
        self.src_tok = nn.Embedding(src_vocab_size, d_model)
        self.tgt_tok = self.src_tok if self.shared_vocab else nn.Embedding(tgt_vocab_size, d_model)
        self.pos = positional_encoding("sinusoidal", max_len, d_model)
        self.drop = Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderBlock(d_model, n_head, dropout, ff_mult) for _ in range(n_enc_layer))
        self.ln_enc = nn.LayerNorm(d_model)
        self.decoder = nn.ModuleList(DecoderBlock(d_model, n_head, dropout, ff_mult) for _ in range(n_dec_layer))
        self.ln_dec = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, tgt_vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for emb in {self.src_tok, self.tgt_tok}:  # std C^-½, scaled by √C on the way in: unit-size inputs
            nn.init.normal_(emb.weight, 0.0, d_model ** -0.5)
        self.head.weight = self.tgt_tok.weight

    def _embed(self, emb: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        if start + ids.shape[1] > self.max_len:
            raise DlforgeError(f"a sequence of {start + ids.shape[1]} tokens is longer than the model's maximum "
                               f"length ({self.max_len})")
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        return self.drop(emb(ids) * math.sqrt(self.d_model) + self.pos(pos))

    def encode(self, src: torch.Tensor) -> Memory:
        """src (B, S) padded with pad_id -> the decoder's Memory."""
        src_mask = src != self.pad_id                                         # (B, S)
        x = self._embed(self.src_tok, src)
        for block in self.encoder:
            x = block(x, src_mask)
        memory = self.ln_enc(x)                                               # (B, S, C)
        return Memory(src_mask, [b.cross.keys_values(memory) for b in self.decoder])

    def decode(self, tgt: torch.Tensor, memory: Memory, cache: KVCache | None = None) -> torch.Tensor:
        """tgt (B, T) -> logits (B, T, V); with a cache, tgt holds only the new tokens."""
        y = self._embed(self.tgt_tok, tgt, cache.length if cache is not None else 0)
        for i, block in enumerate(self.decoder):
            y = block(y, memory.kv[i], memory.src_mask, cache, i)
        return self.head(self.ln_dec(y))

    def init_cache(self) -> KVCache:
        return KVCache(len(self.decoder))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:  # (B, S), (B, T) -> (B, T, V)
        return self.decode(tgt, self.encode(src))

    def cross_attention_maps(self, src: torch.Tensor, tgt: torch.Tensor) -> list[torch.Tensor]:
        """Cross-attention probabilities of every decoder layer for one pair: n_layer × (heads, T, S)."""
        attns = [b.cross for b in self.decoder]
        for a in attns:
            a.keep_weights = True
        try:
            with torch.no_grad():
                self(src[None], tgt[None])
            return [a.weights[0].cpu() for a in attns]
        finally:
            for a in attns:
                a.keep_weights, a.weights = False, None


@register_model("transformer", task="seq2seq")
def transformer(src_vocab_size: int = 1000, tgt_vocab_size: int | None = None, **kw) -> EncoderDecoder:
    """Encoder–decoder: 3 + 3 layers, 4 heads, 256 wide, dropout 0.1; all sizes configurable."""
    return EncoderDecoder(src_vocab_size, tgt_vocab_size, **kw)


@register_model("transformer-tiny", task="seq2seq")
def transformer_tiny(src_vocab_size: int = 100, tgt_vocab_size: int | None = None, **kw) -> EncoderDecoder:
    """Encoder–decoder: 1 + 1 layers, 2 heads, 32 wide: tests and quick tries."""
    return EncoderDecoder(src_vocab_size, tgt_vocab_size, **{"n_enc_layer": 1, "n_dec_layer": 1, "n_head": 2,
                                                             "d_model": 32, "dropout": 0.0, **kw})


@register_model("transformer-base", task="seq2seq")
def transformer_base(src_vocab_size: int = 1000, tgt_vocab_size: int | None = None, **kw) -> EncoderDecoder:
    """The paper's base model: 6 + 6 layers, 8 heads, 512 wide (a GPU size)."""
    return EncoderDecoder(src_vocab_size, tgt_vocab_size, **{"n_enc_layer": 6, "n_dec_layer": 6, "n_head": 8,
                                                             "d_model": 512, **kw})

"""The text-conditioned denoiser: a UNet that predicts the noise ε in x_t (Ho et al., 2020), conditioned on
the timestep and on a caption (Rombach et al., 2022, "latent diffusion", here on pixels).

ids (B, S) -> TextEncoder: embedding·√D + sinusoidal positions -> EncoderBlocks -> LN -> states (B, S, D)
   (or, for a frozen external encoder, float states (B, S, D) given directly).
t (B,) -> sinusoidal embedding -> MLP -> temb (B, 4C), plus the caption's pooled state (Imagen's trick:
   a global conditioning signal from step one, beside the cross-attention).
x_t (B, 1, H, W) [-> pixel-unshuffle p×p: (B, p², H/p, W/p)] -> conv -> per level l: ResBlocks(GroupNorm, SiLU,
   conv, + temb) [+ SpatialAttention at low resolution: self-attention over the H·W positions, cross-attention
   to the caption's states, FF]
   -> stride-2 conv ... middle ResBlock, attention, ResBlock ... up: nearest ×2, conv, ResBlocks on
   [x, skip] -> GroupNorm, SiLU, conv [-> pixel-shuffle] -> ε̂ (B, 1, H, W).
The model never sees a scheduler: it maps (x_t, t, caption) to ε̂; the pipeline owns the loop.
Classifier-free guidance's null caption is the empty caption: the <s> token alone.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from dlforge.errors import DlforgeError
from dlforge.models.layers import FeedForward, MultiHeadAttention, positional_encoding
from dlforge.models.transformer import EncoderBlock
from dlforge.registry import register_model

PAD, BOS = 0, 1  # the caption vocabulary's first ids (data/captions.py)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) -> (B, dim): [cos(t·ω_i), sin(t·ω_i)], ω_i = max_period^(-i / (dim/2)) (the Transformer's PE)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                                        # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class TextEncoder(nn.Module):
    """The project's own Transformer encoder over caption words, trained jointly with the UNet."""

    def __init__(self, vocab_size: int, max_len: int = 32, d_model: int = 64, n_layer: int = 2, n_head: int = 4):
        super().__init__()
        self.max_len, self.d_model = max_len, d_model
        self.tok = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.tok.weight, 0.0, d_model ** -0.5)
        self.pos = positional_encoding("sinusoidal", max_len, d_model)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, n_head, 0.0, 4) for _ in range(n_layer))
        self.ln = nn.LayerNorm(d_model)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, S) padded with PAD -> (states (B, S, D), mask (B, S) True = real token)."""
        if ids.shape[1] > self.max_len:
            raise DlforgeError(f"a caption of {ids.shape[1]} tokens is longer than the text encoder's "
                               f"maximum ({self.max_len})")
        mask = ids != PAD
        x = self.tok(ids) * math.sqrt(self.d_model) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x), mask


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W·temb; h = conv(dropout(SiLU(GN(h)))); -> skip(x) + h."""

    def __init__(self, c_in: int, c_out: int, temb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(temb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:  # (B, C, H, W), (B, 4C0)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(temb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SpatialAttention(nn.Module):
    """On the H·W positions as tokens (B, HW, C): x + self-attn(LN(x)); x + cross-attn(LN(x), caption);
    x + FF(LN(x)). The caption's states are projected from D to C."""

    def __init__(self, ch: int, ctx_dim: int, n_head: int):
        super().__init__()
        heads = n_head if ch % n_head == 0 else 1
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.ln1, self.attn = nn.LayerNorm(ch), MultiHeadAttention(ch, heads, causal=False)
        self.ln2, self.cross = nn.LayerNorm(ch), MultiHeadAttention(ch, heads, causal=False)
        self.ctx = nn.Linear(ctx_dim, ch)
        self.ln3, self.ff = nn.LayerNorm(ch), FeedForward(ch, mult=2)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)                                   # (B, HW, C)
        h = h + self.attn(self.ln1(h))
        h = h + self.cross(self.ln2(h), context=self.ctx(ctx), key_mask=mask)
        h = h + self.ff(self.ln3(h))
        return x + self.out(h.transpose(1, 2).reshape(B, C, H, W))


class UNet(nn.Module):
    """ε̂ = model(x_t, t, ids) (own text encoder) or model(x_t, t, states, mask) (external states)."""

    def __init__(self, vocab_size: int = 64, img_size: int = 28, in_channels: int = 1, ch: int = 32,
                 ch_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1, attn_levels: tuple[int, ...] = (1, 2),
                 n_head: int = 4, dropout: float = 0.0, text_dim: int = 64, text_layers: int = 2, max_len: int = 32,
                 context_dim: int | None = None, patch: int = 1):
        super().__init__()
        levels = len(ch_mult)
        if ch % 2:  # the sinusoidal time embedding is ch/2 sines and ch/2 cosines
            raise DlforgeError(f"--width {ch}: the unet's time embedding needs an even width")
        if img_size % (patch * 2 ** (levels - 1)):
            raise DlforgeError(f"--img-size {img_size}: the unet divides it by {patch} then halves it {levels - 1} "
                               f"times; use a multiple of {patch * 2 ** (levels - 1)}")
        self.img_size, self.in_channels, self.patch = img_size, in_channels, patch
        self.text = TextEncoder(vocab_size, max_len, text_dim, text_layers, n_head) if context_dim is None else None
        ctx_dim = context_dim or text_dim
        temb = 4 * ch
        self.ch = ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.text_pool = nn.Linear(ctx_dim, temb)
        self.conv_in = nn.Conv2d(in_channels * patch ** 2, ch, 3, padding=1)
        chans = [ch * m for m in ch_mult]
        self.down, skips, c = nn.ModuleList(), [ch], ch
        for lvl, co in enumerate(chans):
            for _ in range(num_res_blocks):
                self.down.append(self._level(c, co, temb, dropout, lvl in attn_levels, ctx_dim, n_head))
                c = co
                skips.append(c)
            if lvl < levels - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, temb, dropout), SpatialAttention(c, ctx_dim, n_head),
                                  ResBlock(c, c, temb, dropout)])
        self.up = nn.ModuleList()
        for lvl in reversed(range(levels)):
            co = chans[lvl]
            for _ in range(num_res_blocks + 1):
                self.up.append(self._level(c + skips.pop(), co, temb, dropout, lvl in attn_levels, ctx_dim, n_head))
                c = co
            if lvl > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))
        self.norm_out, self.conv_out = nn.GroupNorm(_groups(c), c), nn.Conv2d(c, in_channels * patch ** 2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _level(c_in: int, c_out: int, temb: int, dropout: float, attn: bool, ctx_dim: int, n_head: int) -> nn.ModuleList:
        return nn.ModuleList([ResBlock(c_in, c_out, temb, dropout)] +
                             ([SpatialAttention(c_out, ctx_dim, n_head)] if attn else []))

    def encode_text(self, cond: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, S) -> (states, mask); float states (B, S, D) pass through (mask: all real by default)."""
        if not cond.is_floating_point():
            if self.text is None:
                raise DlforgeError("this model takes text-encoder states, not token ids")
            return self.text(cond)
        return cond, torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device) if mask is None else mask

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, C, H, W), (B,), (B, S) -> (B, C, H, W)
        ctx, mask = self.encode_text(cond, mask)                                     # (B, S, D), (B, S)
        m = mask.unsqueeze(-1).to(ctx.dtype)
        pooled = (ctx * m).sum(1) / m.sum(1).clamp_min(1)                           # (B, D)
        temb = self.time_mlp(timestep_embedding(t, self.ch)) + self.text_pool(pooled)  # (B, 4C)
        h = self.conv_in(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        hs = [h]
        for mod in self.down:
            h = self._run(mod, h, temb, ctx, mask)
            hs.append(h)
        for mod in self.mid:
            h = mod(h, temb) if isinstance(mod, ResBlock) else mod(h, ctx, mask)
        for mod in self.up:
            if isinstance(mod, nn.ModuleList):
                h = torch.cat([h, hs.pop()], 1)
            h = self._run(mod, h, temb, ctx, mask)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out

    @staticmethod
    def _run(mod: nn.Module, h: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not isinstance(mod, nn.ModuleList):  # a down- or up-sampling conv
            return mod(h)
        h = mod[0](h, temb)
        return mod[1](h, ctx, mask) if len(mod) > 1 else h


# ---------------------------------------------------------------- registered variants
@register_model("unet", task="denoise")
def unet(vocab_size: int = 64, img_size: int = 28, **kw) -> UNet:
    """Text-conditioned UNet: 32/64/64 channels, attention at 1/2 and 1/4 resolution, 2-layer text encoder."""
    return UNet(vocab_size, img_size, **kw)


@register_model("unet-small", task="denoise")
def unet_small(vocab_size: int = 64, img_size: int = 28, **kw) -> UNet:
    """Text-conditioned UNet: 24/48/48 channels, attention at 1/4 resolution only: quick CPU runs."""
    return UNet(vocab_size, img_size, **{"ch": 24, "attn_levels": (2,), **kw})


@register_model("unet-fast", task="denoise")
def unet_fast(vocab_size: int = 64, img_size: int = 28, **kw) -> UNet:
    """Text-conditioned UNet on 2×2 pixel-unshuffled input, about twice unet-small's CPU training speed.

    The image goes in as 4 channels at half the size, as in Hoogeboom et al., 2023: 32/64 channels at 1/2 and
    1/4 resolution, attention at 1/4, about unet-small's parameter count."""
    return UNet(vocab_size, img_size, **{"ch": 32, "ch_mult": (1, 2), "attn_levels": (1,), "patch": 2, **kw})


@register_model("unet-tiny", task="denoise")
def unet_tiny(vocab_size: int = 64, img_size: int = 8, **kw) -> UNet:
    """Text-conditioned UNet: 8/16 channels, one text layer of 16: tests."""
    return UNet(vocab_size, img_size, **{"ch": 8, "ch_mult": (1, 2), "attn_levels": (1,), "n_head": 2,
                                         "text_dim": 16, "text_layers": 1, **kw})

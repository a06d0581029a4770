"""The graphs each family exports: small nn.Modules over the run's own model, tensors in and tensors out, with
example inputs and named axes. Nothing here re-implements a model: each wrapper calls the model's own
forward / encode / decode, so the graph computes exactly what dlforge does.

  classifier   images uint8 (N, C, H, W) at the dataset's size -> test transform (resize, /255, normalise,
               gray -> 3 channels) -> model -> logits (N, K)
  gpt          logits: ids (B, T) -> logits (B, T, V)
               decoder_with_past: ids (B, T), past.i.key/value (B, heads, P, hd) per layer -> logits (B, T, V),
               present.i.key/value (B, heads, P + T, hd); P = 0 (empty past) runs a prompt
  rnn/lstm/gru rnn: ids (B, T), h (layers, B, H) [, c] -> logits (B, T, V), h_n [, c_n]; zeros to start
  transformer  encoder: src (B, S) -> src_mask (B, S) bool, cross.i.key/value (B, heads, S, hd)
               decoder: tgt (B, T), src_mask, cross.*, past.* (self-attention cache) -> logits, present.*
  asr-*        recognizer: features (B, T, n_mels) log-mel, clips of equal length -> log_probs (B, ⌈T/4⌉, V + 1)
  unet         text_encoder: ids (B, L) -> states (B, L, D), mask (B, L) bool
               unet_step: x_t (B, C, H, W), t (B,) int64, states, mask -> eps (B, C, H, W)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dlforge.data.transforms import ImageTransform, TransformConfig
from dlforge.models.layers import KVCache

Dims = tuple  # per axis: an int (fixed) or a name (dynamic: "batch", "tokens", "past", ...)


@dataclass
class Graph:
    """One ONNX file: `module(*examples)` is traced; inputs name -> (example, dims), outputs name -> dims."""
    name: str
    module: nn.Module
    inputs: dict[str, tuple[torch.Tensor, Dims]]
    outputs: dict[str, Dims]
    doc: str = ""
    examples: list[tuple[torch.Tensor, ...]] = field(default_factory=list)  # more inputs to check the export on
    dynamo: bool = True  # False: the TorchScript exporter (recurrent cells: see onnx.py)
    calibration: list[dict] | None = None  # inputs for static int8 quantisation (None: dynamic)


def _kv_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(n) for kv in ("key", "value")]


def _cache(flat: tuple[torch.Tensor, ...]) -> KVCache:
    """(k0, v0, k1, v1, ...) -> a KVCache holding them (an empty past is a (B, H, 0, hd) tensor)."""
    cache = KVCache(len(flat) // 2)
    cache.layers = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]
    return cache


def _flat(cache: KVCache) -> tuple[torch.Tensor, ...]:
    return tuple(t for kv in cache.layers for t in kv)


def _sizes(limit: int) -> tuple[int, int]:
    """Example (new tokens, past) for a context of `limit`: distinct and ≥ 2, so that no axis is traced as a
    constant (torch.export specialises sizes 0 and 1 and may merge axes of equal example sizes)."""
    t = 3 if limit >= 8 else 2
    p = max(2, min(7, limit - t))
    return t, p + 1 if p == t and t + p < limit else p


# ---------------------------------------------------------------- image classifiers
class ClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module, transform: TransformConfig):
        super().__init__()
        self.model, self.transform = model, ImageTransform(transform, train=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # uint8 (N, C, H, W) -> logits (N, K)
        return self.model(self.transform(images))


def classifier_graphs(model: nn.Module, transform: TransformConfig, native: tuple[int, int, int]) -> list[Graph]:
    """native: (C, H, W) of the dataset's images, what the graph takes."""
    x = torch.randint(0, 256, (3, *native), dtype=torch.uint8)
    k = model(ImageTransform(transform, train=False)(x[:1])).shape[1]
    return [Graph("classifier", ClassifierGraph(model, transform), {"images": (x, ("batch", *native))},
                  {"logits": ("batch", k)}, "uint8 images at the dataset's size -> logits; preprocessing inside",
                  [(torch.randint(0, 256, (n, *native), dtype=torch.uint8),) for n in (1, 5)])]


# ---------------------------------------------------------------- language models
class GPTLogits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)[0]


class GPTWithPast(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, cache = self.model(ids, _cache(past))
        return (logits, *_flat(cache))


class RNNGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, state = self.model(ids, state if len(state) == 2 else state[0])
        return (logits, *(state if isinstance(state, tuple) else (state,)))


def lm_graphs(model: nn.Module) -> list[Graph]:
    V = model.head.out_features
    if model.recurrent:
        rnn = model.rnn
        L, H = rnn.num_layers, rnn.hidden_size
        names = ["h", "c"] if isinstance(rnn, nn.LSTM) else ["h"]
        state = {n: (torch.randn(L, 3, H), (L, "batch", H)) for n in names}
        ex = [(torch.randint(0, V, (b, t)), *(torch.randn(L, b, H) for _ in names)) for b, t in ((1, 1), (4, 9))]
        return [Graph("rnn", RNNGraph(model), {"ids": (torch.randint(0, V, (3, 5)), ("batch", "tokens")), **state},
                      {"logits": ("batch", "tokens", V), **{f"{n}_n": (L, "batch", H) for n in names}},
                      "ids and the recurrent state (zeros to start) -> logits and the next state", ex, dynamo=False)]
    n, attn = len(model.blocks), model.blocks[0].attn
    heads, hd = attn.n_heads, attn.q.out_features // attn.n_heads
    T, P = _sizes(model.block_size)
    past = {name: (torch.randn(3, heads, P, hd), ("batch", heads, "past", hd)) for name in _kv_names("past", n)}

    def with_past(b: int, t: int, p: int) -> tuple[torch.Tensor, ...]:
        return (torch.randint(0, V, (b, t)), *(torch.randn(b, heads, p, hd) for _ in range(2 * n)))
    return [Graph("logits", GPTLogits(model), {"ids": (torch.randint(0, V, (3, T)), ("batch", "tokens"))},
                  {"logits": ("batch", "tokens", V)}, "ids -> logits of every position",
                  [(torch.randint(0, V, (b, t)),) for b, t in ((1, 1), (2, model.block_size))]),
            Graph("decoder_with_past", GPTWithPast(model),
                  {"ids": (torch.randint(0, V, (3, T)), ("batch", "tokens")), **past},
                  {"logits": ("batch", "tokens", V),
                   **{name: ("batch", heads, "past + tokens", hd) for name in _kv_names("present", n)}},
                  "new ids and the key/value cache of the past -> their logits and the cache with them (an empty "
                  "past, P = 0, runs the prompt)",
                  [with_past(1, 1, 0), with_past(2, 4, 0), with_past(1, 1, model.block_size - 1)])]


# ---------------------------------------------------------------- encoder–decoder
class EncoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory = self.model.encode(src)
        return (memory.src_mask, *(t for kv in memory.kv for t in kv))


class DecoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tgt: torch.Tensor, src_mask: torch.Tensor, *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from dlforge.models.transformer import Memory
        n = len(self.model.decoder)
        cross, past = kv[:2 * n], kv[2 * n:]
        memory = Memory(src_mask, [(cross[2 * i], cross[2 * i + 1]) for i in range(n)])
        cache = _cache(past)
        logits = self.model.decode(tgt, memory, cache)
        return (logits, *_flat(cache))


def seq2seq_graphs(model: nn.Module) -> list[Graph]:
    n, attn = len(model.decoder), model.decoder[0].attn
    heads, hd = attn.n_heads, attn.q.out_features // attn.n_heads
    V_src, V = model.src_tok.num_embeddings, model.head.out_features
    T, P = _sizes(model.max_len)
    S = 11 if model.max_len >= 12 else T + P  # another size again
    src = torch.randint(3, V_src, (3, S))
    src[0, -2:] = model.pad_id  # a padded row
    with torch.no_grad():
        enc = EncoderGraph(model)(src)
    cross = {name: ("batch", heads, "src_tokens", hd) for name in _kv_names("cross", n)}
    past = {name: (torch.randn(3, heads, P, hd), ("batch", heads, "past", hd)) for name in _kv_names("past", n)}
    mask = ("batch", "src_tokens")
    dec_inputs = {"tgt": (torch.randint(3, V, (3, T)), ("batch", "tokens")), "src_mask": (enc[0], mask),
                  **{name: (t, cross[name]) for name, t in zip(cross, enc[1:])}, **past}

    def dec_example(b: int, t: int, p: int, s: int) -> tuple[torch.Tensor, ...]:
        e = EncoderGraph(model)(torch.randint(3, V_src, (b, s)))
        return (torch.randint(3, V, (b, t)), *e, *(torch.randn(b, heads, p, hd) for _ in range(2 * n)))
    with torch.no_grad():
        examples = [dec_example(1, 1, 0, 2), dec_example(2, 1, 4, 5), dec_example(4, 2, 0, 3)]
    return [Graph("encoder", EncoderGraph(model), {"src": (src, ("batch", "src_tokens"))},
                  {"src_mask": mask, **cross}, "source ids (padded with pad_id) -> the padding mask and every decoder "
                  "layer's cross-attention keys/values", [(torch.randint(3, V_src, (b, s)),) for b, s in ((1, 1), (4, 6))]),
            Graph("decoder", DecoderGraph(model), dec_inputs,
                  {"logits": ("batch", "tokens", V),
                   **{name: ("batch", heads, "past + tokens", hd) for name in _kv_names("present", n)}},
                  "target ids, the encoder's outputs and the self-attention cache -> logits and the cache with them",
                  examples)]


# ---------------------------------------------------------------- diffusion
class UNetStep(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(x_t, t, states, mask)


class TextEncoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_text(ids)


def denoise_graphs(model: nn.Module) -> list[Graph]:
    """The text encoder only where the model has its own (a frozen sentence-transformers one stays outside)."""
    C, S = model.in_channels, model.img_size
    D = model.text.d_model if model.text is not None else model.text_pool.in_features
    L = model.text.max_len if model.text is not None else 1
    vocab = model.text.tok.num_embeddings if model.text is not None else 2
    ids = torch.randint(1, vocab, (3, L))
    ids[0, L // 2 + 1:] = 0  # padding
    states, mask = TextEncoderGraph(model)(ids) if model.text is not None else (torch.randn(3, L, D), ids >= 0)

    def step(b: int) -> tuple[torch.Tensor, ...]:
        mask = torch.rand(b, L) < 0.7
        mask[:, 0] = True  # <s> is always there: a row with no key to attend to is NaN in torch and ONNX alike
        return torch.randn(b, C, S, S), torch.randint(0, 1000, (b,)), torch.randn(b, L, D), mask
    graphs = [Graph("unet_step", UNetStep(model),
                    {"x_t": (torch.randn(3, C, S, S), ("batch", C, S, S)), "t": (torch.tensor([0, 17, 999]), ("batch",)),
                     "states": (states.detach(), ("batch", "text_tokens", D)), "mask": (mask, ("batch", "text_tokens"))},
                    {"eps": ("batch", C, S, S)}, "one denoising step's noise prediction eps(x_t, t, text states)",
                    [step(1), step(4)])]
    if model.text is not None:
        graphs.append(Graph("text_encoder", TextEncoderGraph(model), {"ids": (ids, ("batch", "text_tokens"))},
                            {"states": ("batch", "text_tokens", D), "mask": ("batch", "text_tokens")},
                            "caption ids (padded with 0) -> text states and their mask",
                            [(torch.cat([torch.ones(b, 1, dtype=torch.long), torch.randint(0, vocab, (b, L - 1))], 1),)
                             for b in (1, 2)]))
    return graphs


# ---------------------------------------------------------------- speech recognition
class RecognizerGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(features)
        return logits.log_softmax(-1)


def speech_graphs(model: nn.Module) -> list[Graph]:
    M, V = model.n_mels, model.head.out_features
    ex = [(torch.randn(1, 37, M),), (torch.randn(2, 101, M),)]
    return [Graph("recognizer", RecognizerGraph(model), {"features": (torch.randn(3, 64, M), ("batch", "frames", M))},
                  {"log_probs": ("batch", "ctc_frames", V)},
                  "normalised log-mel features of clips of one length -> CTC log-probabilities (blank = 0)", ex,
                  dynamo=False)]

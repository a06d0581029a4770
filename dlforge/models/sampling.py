"""Sampling from a language model: generate_ids yields new token ids after a prompt, one at a time.

Each step: logits of the last position / temperature -> top-k and nucleus (top-p) filters -> softmax ->
one draw from a seeded CPU generator (temperature 0: the argmax). A GPT steps through its GPTDecoder
(a key/value cache written in place) or, without the cache, reruns the whole context; a recurrent
model carries its state.
"""
from __future__ import annotations

from typing import Iterator

import torch


GREEDY_BELOW = 1e-6


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """(B, V) -> (B, V) with -inf outside the k most likely tokens and outside the smallest set whose
    probability reaches top_p (nucleus sampling, Holtzman et al., 2019)."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p   # tokens after the nucleus is full (the first always stays)
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, V) probabilities on the CPU -> (B, 1) one token each: torch.multinomial(probs, 1, generator=gen),
    draw for draw (the same generator calls: argmax(p / q), q ~ Exp(1), as ATen computes it), without
    multinomial's three validity checks, each a reduction and an .item() (half its cost per token)."""
    q = torch.empty_like(probs).exponential_(1, generator=gen)
    return torch.div(probs, q, out=q).argmax(-1, keepdim=True)


def pick(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
         gen: torch.Generator) -> torch.Tensor:
    """(B, V) logits of the last position -> (B, 1) next tokens; temperature 0 is greedy, and so is any below
    GREEDY_BELOW: there a runner-up even 1e-4 below the best has probability e^-100 (0 in float32), and below
    ~1e-37 logits / temperature overflowed to inf, the softmax to NaN, and every token drawn was id 0."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1, keepdim=True)
    if logits.dtype != torch.float32 or temperature != 1:
        logits = logits.float() / temperature
    if top_k or (top_p is not None and top_p < 1.0):
        logits = filter_logits(logits, top_k, top_p)
    if logits.device.type == "cpu":  # every call counts at batch 1: no no-op .cpu() and .to() per token
        return draw(logits.softmax(-1), gen)
    return draw(logits.softmax(-1).cpu(), gen).to(logits.device)


@torch.inference_mode()
def generate_ids(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one by one after the prompt ids (1, T0).

    Transformers see at most block_size tokens: a longer prompt is cropped to its last block_size
    tokens. With the KV cache each step runs one token; when the cache is full it restarts from the
    last block_size/2 tokens (so past the window, cached and uncached samples may differ). Without it,
    every step recomputes the whole (cropped) context. Recurrent models always carry their state."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    if model.recurrent:
        logits, state = model(ids, model.init_state(1))
        for i in range(max_new_tokens):
            nxt = pick(logits[:, -1], temperature, top_k, top_p, gen)  # (1, 1)
            yield int(nxt)
            if i + 1 < max_new_tokens:
                logits, state = model(nxt, state)
        return
    bs, T0 = model.block_size, ids.shape[1]
    seq = torch.empty(1, T0 + max_new_tokens, dtype=torch.long, device=ids.device)  # the prompt, then each token
    seq[:, :T0] = ids
    decoder = model.decoder() if use_cache else None
    logits = decoder(ids[:, -bs:]) if decoder else model(ids[:, -bs:])[0]
    since = T0  # the cached steps write seq[:, since:] only when a restart reads it
    new: list[int] = []
    for n in range(T0, T0 + max_new_tokens):
        nxt = pick(logits[:, -1], temperature, top_k, top_p, gen)  # (1, 1)
        new.append(int(nxt))
        yield new[-1]
        if n + 1 == T0 + max_new_tokens:
            break
        if decoder is None:
            seq[:, n:n + 1] = nxt
            logits, _ = model(seq[:, max(0, n + 1 - bs):n + 1])
        elif decoder.length < bs:
            logits = decoder(nxt)
        else:
            seq[0, since:n + 1] = torch.tensor(new[since - T0:], dtype=torch.long)
            since = n + 1
            decoder.reset()
            logits = decoder(seq[:, n + 1 - max(1, bs // 2):n + 1])

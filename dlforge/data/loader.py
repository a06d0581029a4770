"""Batches from tensors held in memory, replayable from any position.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), and the
augmentation of batch i from one seeded with (seed, e, i): no hidden state, so a resumed run
sees exactly the batches an uninterrupted one would (no DataLoader workers to fork either —
the whole dataset is already a tensor).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch


_M64 = 0xFFFFFFFFFFFFFFFF


def _splitmix64(z: int) -> int:
    """SplitMix64's finaliser (Steele, Lea and Flood, 2014): every output bit depends on every input bit."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _seeded(*parts: int) -> torch.Generator:
    """A generator for the counters (seed, epoch, batch, ...), each mixed in through SplitMix64. torch's CPU
    generator keeps only the low 32 bits of a seed, so those must differ between the counters: the hash-combine
    used before left consecutive batches at consecutive seeds and overlapped the epochs' ranges. 1,715 batches of
    7 epochs drew from only 991 seeds, so a language model's windows repeated (31,219 distinct of 50,368 in
    1,574 batches, against ~49,100 for independent draws): a third of its 0.02-nat gap to nanoGPT."""
    s = 0
    for p in parts:
        s = _splitmix64(s ^ (p & _M64))
    return torch.Generator().manual_seed(s)


def length_batches(perm: torch.Tensor, lengths: torch.Tensor, batch_size: int, run: int,
                   g: torch.Generator) -> list[torch.Tensor]:
    """Length buckets (padded sequences): sort each run of `run` batches of the order `perm` by length, cut it
    into batches, shuffle the batches with g: a batch holds sequences of similar length, so little of it is
    padding. -> the batches' indices, in their shuffled order."""
    chunks = [c[lengths[c].argsort(stable=True)] for c in perm.split(run * batch_size)]
    batches = torch.cat(chunks).split(batch_size)
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


class BatchLoader:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 drop_last: bool = False, lengths: torch.Tensor | None = None):
        assert len(x) == len(y)
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.seed, self.transform, self.drop_last, self.lengths = seed, transform, drop_last, lengths

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.y)
        if not self.shuffle:
            return torch.arange(n)
        perm = torch.randperm(n, generator=_seeded(self.seed, epoch))
        if self.lengths is None:
            return perm
        return torch.cat(length_batches(perm, self.lengths, self.batch_size, 64, _seeded(self.seed, epoch, 2)))

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start+1, ... of the given epoch."""
        idx = self.order(epoch)
        for i in range(start, len(self)):
            j = idx[i * self.batch_size:(i + 1) * self.batch_size]
            xb, yb = self.x[j], self.y[j]
            if self.transform is not None:
                xb = self.transform(xb, _seeded(self.seed, epoch, i, 1))
            yield xb, yb

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


class TokenLoader:
    """Language-model batches (x, y, reset) from one token stream: x (B, T), y = x shifted by one token.

    windows — batch i of epoch e: B windows at offsets drawn from a generator seeded with (seed, e, i)
              (as nanoGPT samples them); an epoch is N / (B·T) batches.
    tiles   — each epoch cuts the stream into windows of T that do not overlap, from a seeded shift of
              0..T-1 tokens, and reads them in a seeded random order: every token once per epoch (sampling
              without replacement), where independent windows cover some tokens twice and miss others.
              gpt-small's 1,574-step recipe ends 0.003 and 0.019 lower at seeds 0 and 1 (README, "Against
              nanoGPT").
    streams — truncated backpropagation through time: the stream (after a seeded per-epoch shift of
              0..T-1 tokens) is cut into B contiguous rows and batch i is columns [iT, (i+1)T) of every
              row, so row b of batch i+1 continues row b of batch i. reset is True on each epoch's first
              batch: the recurrent state must start again from zero there.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, block_size: int, mode: str = "windows", seed: int = 0):
        assert mode in ("windows", "streams", "tiles")
        self.ids, self.batch_size, self.block_size, self.mode, self.seed = ids, batch_size, block_size, mode, seed

    def __len__(self) -> int:
        n = len(self.ids) - 1
        if self.mode in ("windows", "tiles"):
            return max(1, n // (self.batch_size * self.block_size))
        return n // self.batch_size // self.block_size

    def _shift(self, epoch: int) -> tuple[int, int]:
        """-> (the epoch's seeded shift of up to T-1 tokens, the span of each of the B rows)."""
        span = len(self) * self.block_size
        slack = len(self.ids) - 1 - self.batch_size * span
        return int(torch.randint(min(slack, self.block_size - 1) + 1, (1,), generator=_seeded(self.seed, epoch))), span

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Each batch is read from the ids (a memory map for a large corpus) when it is needed, as int64."""
        T, ids = self.block_size, self.ids
        shift, span = self._shift(epoch) if self.mode == "streams" else (0, 0)
        if self.mode == "tiles":
            g = _seeded(self.seed, epoch, 3)
            phase = int(torch.randint(min(T - 1, len(ids) - 1 - T) + 1, (1,), generator=g))
            tiles = phase + T * torch.randperm((len(ids) - 1 - phase) // T, generator=g)
        for i in range(start, len(self)):
            if self.mode == "tiles":  # a text shorter than B windows repeats them within its one batch
                off = tiles[torch.arange(i * self.batch_size, (i + 1) * self.batch_size) % len(tiles)].tolist()
            elif self.mode == "windows":
                off = torch.randint(len(ids) - T, (self.batch_size,), generator=_seeded(self.seed, epoch, i)).tolist()
            else:  # row b of batch i: columns [iT, (i+1)T] of the stream's b-th contiguous row
                off = [shift + b * span + i * T for b in range(self.batch_size)]
            chunk = torch.stack([ids[o:o + T + 1] for o in off]).long()  # (B, T+1)
            yield chunk[:, :-1], chunk[:, 1:], torch.tensor(i == 0)

    def __iter__(self):
        return self.epoch(0)

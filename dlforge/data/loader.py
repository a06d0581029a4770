"""Batches from tensors held in memory, replayable from any position.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), and the
augmentation of batch i from one seeded with (seed, e, i): no hidden state, so a resumed run
sees exactly the batches an uninterrupted one would (no DataLoader workers to fork either —
the whole dataset is already a tensor).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch


def _seeded(*parts: int) -> torch.Generator:
    s = 0x9E3779B97F4A7C15
    for p in parts:  # a simple 64-bit mix of the counters
        s = (s ^ (p + 0x632BE59BD9B4E019 + (s << 6) + (s >> 2))) & 0xFFFFFFFFFFFFFFFF
    return torch.Generator().manual_seed(s)


class BatchLoader:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 drop_last: bool = False):
        assert len(x) == len(y)
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.seed, self.transform, self.drop_last = seed, transform, drop_last

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.y)
        return torch.randperm(n, generator=_seeded(self.seed, epoch)) if self.shuffle else torch.arange(n)

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

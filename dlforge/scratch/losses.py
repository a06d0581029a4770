"""Losses on the network's raw outputs, each with its gradient; all are means over the batch.

`forward(pred, target)` returns the scalar loss and caches what `backward()` needs;
`backward()` returns dL/dpred with pred's shape. The two classification losses take logits
and are numerically stable for any logit size (no exp of a large positive number).
"""
from __future__ import annotations

import numpy as np

from dlforge.errors import DlforgeError
from dlforge.scratch.activations import Sigmoid


def _check(name: str, pred: np.ndarray, target: np.ndarray, shape: tuple[int, ...]) -> None:
    if target.shape != shape:
        raise DlforgeError(f"{name} expects targets of shape {shape} for outputs of shape "
                           f"{tuple(pred.shape)}, got {tuple(target.shape)}")


class MSELoss:
    """Mean squared error L = mean((pred - y)^2);  dL/dpred = 2 (pred - y) / N, N = pred.size."""

    name = "mse"

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        target = target.reshape(pred.shape) if target.size == pred.size else target
        _check("mse loss", pred, target, pred.shape)
        self.diff = pred - target.astype(pred.dtype)
        return float(np.mean(self.diff * self.diff))

    def backward(self) -> np.ndarray:
        return 2.0 * self.diff / self.diff.size


class BCEWithLogitsLoss:
    """Binary cross-entropy on logits z with labels y in {0, 1}:

    L = mean(-y log sigma(z) - (1 - y) log(1 - sigma(z)))
      = mean(max(z, 0) - z y + log(1 + e^{-|z|}))      (stable form, as in PyTorch)
    dL/dz = (sigma(z) - y) / N,  N = z.size.
    """

    name = "bce"

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float:
        target = target.reshape(logits.shape) if target.size == logits.size else target
        _check("bce loss", logits, target, logits.shape)
        self.z, self.y = logits, target.astype(logits.dtype)
        per = np.maximum(logits, 0) - logits * self.y + np.log1p(np.exp(-np.abs(logits)))
        return float(per.mean())

    def backward(self) -> np.ndarray:
        return (Sigmoid.f(self.z) - self.y) / self.z.size


class CrossEntropyLoss:
    """Softmax cross-entropy on logits z (B, C) with class indices y (B,):

    log p = z - logsumexp(z),  logsumexp(z) = m + log sum_j e^{z_j - m},  m = max_j z_j
    L = -mean_b log p[b, y_b]
    dL/dz = (softmax(z) - onehot(y)) / B
    """

    name = "cross_entropy"

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float:
        if logits.ndim != 2:
            raise DlforgeError("cross_entropy loss expects logits of shape (B, C), "
                               f"got {tuple(logits.shape)}")
        _check("cross_entropy loss", logits, target, (logits.shape[0],))
        m = logits.max(axis=1, keepdims=True)                              # (B, 1)
        log_p = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        self.y = target.astype(np.int64)
        if self.y.min(initial=0) < 0 or self.y.max(initial=0) >= logits.shape[1]:
            raise DlforgeError(f"cross_entropy loss expects class indices in "
                               f"0..{logits.shape[1] - 1}, got {self.y.min()}..{self.y.max()}")
        self.p = np.exp(log_p)                                             # (B, C) softmax
        return float(-log_p[np.arange(len(self.y)), self.y].mean())

    def backward(self) -> np.ndarray:
        grad = self.p.copy()
        grad[np.arange(len(self.y)), self.y] -= 1.0
        return grad / len(self.y)


LOSSES = {cls.name: cls for cls in (MSELoss, BCEWithLogitsLoss, CrossEntropyLoss)}


def get_loss(name: str):
    """A new loss by name: mse | bce | cross_entropy."""
    if name not in LOSSES:
        raise DlforgeError(f"loss: expected one of {', '.join(LOSSES)}; got {name!r}")
    return LOSSES[name]()


__all__ = ["MSELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "get_loss"]

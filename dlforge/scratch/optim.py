"""Optimisers: step 4 of backprop, moving every weight against its gradient.

Both follow torch.optim exactly (same update order, same weight-decay convention: the L2 term
wd * p is added to the gradient), so a NumPy run and a torch run stay in lock-step.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dlforge.errors import DlforgeError
from dlforge.scratch.layers import Parameter


class Optimizer:
    def __init__(self, params: Sequence[Parameter], lr: float):
        if not lr > 0:
            raise DlforgeError(f"--lr: expected a positive learning rate, got {lr}")
        self.params, self.lr, self.t = list(params), lr, 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = np.zeros_like(p.data)

    def step(self) -> None:
        self.t += 1
        for i, p in enumerate(self.params):
            self.update(i, p)

    def update(self, i: int, p: Parameter) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """g = grad + wd * p;  v = momentum * v + g (v = g on the first step);  p -= lr * v."""

    def __init__(self, params: Sequence[Parameter], lr: float = 1e-2, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity: list[np.ndarray | None] = [None] * len(self.params)

    def update(self, i: int, p: Parameter) -> None:
        g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
        if self.momentum:
            v = self.velocity[i]
            if v is None:
                v = self.velocity[i] = g.copy()
            else:
                v *= self.momentum
                v += g
            g = v
        p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with torch.optim.Adam's L2 weight decay:

    g = grad + wd * p
    m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params: Sequence[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def update(self, i: int, p: Parameter) -> None:
        b1, b2 = self.betas
        g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
        m, v = self.m[i], self.v[i]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        denom = np.sqrt(v)
        denom /= math.sqrt(1 - b2 ** self.t)
        denom += self.eps
        p.data -= (self.lr / (1 - b1 ** self.t)) * (m / denom)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, params: Sequence[Parameter], lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> Optimizer:
    """Adam(params, lr, weight_decay) or SGD(params, lr, momentum, weight_decay) by name."""
    if name == "adam":
        return Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise DlforgeError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}; got {name!r}")

"""The multi-layer perceptron whose training step is the four steps of backpropagation:

    logits = net.forward(x)        # 1. forward pass: x -> Dense -> act -> ... -> Dense
    loss = net.loss(logits, y)     # 2. loss calculation
    net.backward()                 # 3. backward pass: dL/dW for every W, by the chain rule
    net.step()                     # 4. weight update: the optimiser moves W against dL/dW
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dlforge.errors import DlforgeError
from dlforge.scratch.activations import get_activation
from dlforge.scratch.layers import Dense, Parameter
from dlforge.scratch.losses import get_loss
from dlforge.scratch.optim import Optimizer

DTYPES = ("float32", "float64")


class MLP:
    """Sequential Dense + activation stack: sizes (n_in, h1, ..., n_out), no activation on the
    output (the loss applies softmax / sigmoid to the logits).

    `net.optimizer` must be set (e.g. `Adam(net.parameters(), lr=1e-3)`) before `step()`.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", loss: str = "cross_entropy",
                 dtype: str = "float64", seed: int = 0):
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise DlforgeError("MLP sizes: expected (n_in, ..., n_out) of positive ints, "
                               f"got {tuple(sizes)}")
        if dtype not in DTYPES:
            raise DlforgeError(f"--dtype: expected one of {', '.join(DTYPES)}; got {dtype!r}")
        rng = np.random.default_rng(seed)
        self.sizes, self.dtype = tuple(int(n) for n in sizes), np.dtype(dtype)
        self.layers: list = []
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), start=1):
            self.layers.append(Dense(n_in, n_out, rng, dtype, index=i))
            if i < len(self.sizes) - 1:
                self.layers.append(get_activation(activation))
        self.criterion = get_loss(loss)
        self.optimizer: Optimizer | None = None
        self.steps = 0                      # weight updates done so far
        self.outputs: list[np.ndarray] = []  # output of every layer in the last forward pass

    # -- the four steps ---------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """1. Forward pass: (B, n_in) -> logits (B, n_out); layers cache what backward needs."""
        h = np.asarray(x, dtype=self.dtype)
        self.outputs = []
        for layer in self.layers:
            h = layer.forward(h)
            self.outputs.append(h)
        return h

    def loss(self, logits: np.ndarray, y: np.ndarray) -> float:
        """2. Loss calculation: a scalar; a NaN/Inf loss stops training with a clear error."""
        value = self.criterion.forward(logits, np.asarray(y))
        if not math.isfinite(value):
            lr = f", now {self.optimizer.lr:g}" if self.optimizer is not None else ""
            raise DlforgeError(f"loss became {value} at step {self.steps + 1}: training diverged; "
                               f"try a lower learning rate (--lr{lr})")
        return value

    def backward(self) -> np.ndarray:
        """3. Backward pass: dL/dlogits from the loss, then through the layers in reverse by the
        chain rule, filling every Parameter.grad. Returns dL/dx (B, n_in)."""
        grad = self.criterion.backward()
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def step(self) -> None:
        """4. Weight update: the optimiser moves each parameter against its gradient."""
        if self.optimizer is None:
            raise DlforgeError("MLP.step: no optimiser; set net.optimizer = Adam(net.parameters())")
        self.optimizer.step()
        self.steps += 1

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """The four steps in order; returns the loss before the update."""
        logits = self.forward(x)
        value = self.loss(logits, y)
        self.backward()
        self.step()
        return value

    # -- helpers ------------------------------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def dense_layers(self) -> list[Dense]:
        return [layer for layer in self.layers if isinstance(layer, Dense)]

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class indices (B,): argmax of the logits, or logit > 0 for a single output."""
        logits = np.concatenate([self.forward(x[i:i + batch_size])
                                 for i in range(0, len(x), batch_size)])
        return (logits[:, 0] > 0).astype(np.int64) if logits.shape[1] == 1 else logits.argmax(1)

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def __repr__(self) -> str:
        body = ", ".join(repr(layer) for layer in self.layers)
        return f"MLP({body}; loss={self.criterion.name}, dtype={self.dtype})"

"""Parameters and the fully connected (Dense) layer, in NumPy.

Dense: z = x @ W + b with x (B, n_in), W (n_in, n_out), b (n_out,), z (B, n_out).
Backward, given g = dL/dz (B, n_out), by the chain rule:
    dL/dW = x^T g        (n_in, n_out)
    dL/db = sum_B g      (n_out,)
    dL/dx = g W^T        (B, n_in)
"""
from __future__ import annotations

import numpy as np

from dlforge.errors import DlforgeError


class Parameter:
    """A trainable array and its gradient (filled by backward, read by the optimiser)."""

    def __init__(self, data: np.ndarray, name: str = ""):
        self.data = data
        self.grad = np.zeros_like(data)
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Parameter({self.name}, shape={self.data.shape}, dtype={self.data.dtype})"


class Dense:
    """Fully connected layer z = x @ W + b, initialised like torch.nn.Linear.

    W, b ~ U(-1/sqrt(n_in), 1/sqrt(n_in)) (PyTorch's default for Linear).
    `index` is the 1-based position among the network's Dense layers, used in errors.
    """

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator | None = None,
                 dtype: str | np.dtype = "float64", index: int = 1):
        rng = rng if rng is not None else np.random.default_rng(0)
        bound = 1.0 / np.sqrt(n_in)
        self.n_in, self.n_out, self.index = n_in, n_out, index
        W = rng.uniform(-bound, bound, (n_in, n_out)).astype(dtype)      # (n_in, n_out)
        b = rng.uniform(-bound, bound, (n_out,)).astype(dtype)           # (n_out,)
        self.W, self.b = Parameter(W, f"dense{index}.W"), Parameter(b, f"dense{index}.b")

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise DlforgeError(f"Dense layer {self.index} expects inputs of shape "
                               f"(B, {self.n_in}), got {tuple(x.shape)}")
        self.x = x                                      # (B, n_in) cached for dL/dW
        return x @ self.W.data + self.b.data            # (B, n_out)

    def backward(self, grad_z: np.ndarray) -> np.ndarray:
        if grad_z.shape != (self.x.shape[0], self.n_out):
            raise DlforgeError(f"Dense layer {self.index} expects gradients of shape "
                               f"({self.x.shape[0]}, {self.n_out}), got {tuple(grad_z.shape)}")
        self.W.grad = self.x.T @ grad_z                 # (n_in, n_out)
        self.b.grad = grad_z.sum(axis=0)                # (n_out,)
        return grad_z @ self.W.data.T                   # (B, n_in)

    def parameters(self) -> list[Parameter]:
        return [self.W, self.b]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def __repr__(self) -> str:
        return f"Dense({self.n_in} -> {self.n_out})"

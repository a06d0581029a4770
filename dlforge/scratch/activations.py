"""Activation functions with their derivatives, in NumPy.

Each activation maps pre-activations z (B, n) to a = f(z) (B, n). `forward` caches what
`backward` needs; `backward(grad_a)` returns dL/dz by the chain rule. `derivative(z)` gives
the elementwise f'(z) for plots (Softmax, whose Jacobian is not diagonal, has none).
"""
from __future__ import annotations

import numpy as np

from dlforge.errors import DlforgeError


class Activation:
    """Base class: no parameters, forward caches, backward applies the chain rule."""

    name = "activation"

    def forward(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def parameters(self) -> list:
        return []

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self.forward(z)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Sigmoid(Activation):
    """sigma(z) = 1 / (1 + e^-z) in (0, 1);  sigma'(z) = sigma(z) (1 - sigma(z))."""

    name = "sigmoid"

    @staticmethod
    def f(z: np.ndarray) -> np.ndarray:
        # 1/(1+e^-z) == (1 + tanh(z/2)) / 2, which never overflows for large |z|
        return 0.5 * (1.0 + np.tanh(0.5 * z))

    def forward(self, z: np.ndarray) -> np.ndarray:
        self.a = self.f(z)
        return self.a

    def backward(self, grad_a: np.ndarray) -> np.ndarray:
        return grad_a * self.a * (1.0 - self.a)

    def derivative(self, z: np.ndarray) -> np.ndarray:
        s = self.f(z)
        return s * (1.0 - s)


class ReLU(Activation):
    """relu(z) = max(z, 0);  relu'(z) = 1 if z > 0 else 0 (0 at the kink, as in PyTorch)."""

    name = "relu"

    def forward(self, z: np.ndarray) -> np.ndarray:
        self.mask = z > 0                      # (B, n) which units let gradient through
        return np.maximum(z, 0)

    def backward(self, grad_a: np.ndarray) -> np.ndarray:
        return grad_a * self.mask

    def derivative(self, z: np.ndarray) -> np.ndarray:
        return (z > 0).astype(z.dtype)


class Tanh(Activation):
    """tanh(z) in (-1, 1);  tanh'(z) = 1 - tanh(z)^2."""

    name = "tanh"

    def forward(self, z: np.ndarray) -> np.ndarray:
        self.a = np.tanh(z)
        return self.a

    def backward(self, grad_a: np.ndarray) -> np.ndarray:
        return grad_a * (1.0 - self.a * self.a)

    def derivative(self, z: np.ndarray) -> np.ndarray:
        return 1.0 - np.tanh(z) ** 2


class Softmax(Activation):
    """softmax(z)_i = e^{z_i} / sum_j e^{z_j} over the last axis: scores -> probabilities.

    Its Jacobian is J_ij = s_i (delta_ij - s_j), so the vector-Jacobian product is
    dL/dz = J^T g = s * (g - <g, s>)  — O(n) per row, the n x n matrix is never built.
    """

    name = "softmax"

    @staticmethod
    def f(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=-1, keepdims=True))   # shift by the max: no overflow
        return e / e.sum(axis=-1, keepdims=True)

    def forward(self, z: np.ndarray) -> np.ndarray:
        self.s = self.f(z)
        return self.s

    def backward(self, grad_a: np.ndarray) -> np.ndarray:
        dot = (grad_a * self.s).sum(axis=-1, keepdims=True)   # (B, 1) <g, s>
        return self.s * (grad_a - dot)

    def jacobian(self, z: np.ndarray) -> np.ndarray:
        """Full Jacobian (B, n, n) ds_i/dz_j, for teaching and tests only."""
        s = self.f(z)
        return s[:, :, None] * (np.eye(s.shape[-1], dtype=s.dtype) - s[:, None, :])


ACTIVATIONS = {cls.name: cls for cls in (Sigmoid, ReLU, Tanh, Softmax)}


def get_activation(name: str) -> Activation:
    """A new activation by name: sigmoid | relu | tanh | softmax."""
    if name not in ACTIVATIONS:
        raise DlforgeError(f"activation: expected one of {', '.join(ACTIVATIONS)}; got {name!r}")
    return ACTIVATIONS[name]()

"""Fréchet distance between two sets of features (Heusel et al., 2017, "FID", here on a dlforge
classifier's penultimate layer instead of Inception's): with means μ and covariances Σ,
FD = ‖μ₁ - μ₂‖² + Tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^½)."""
from __future__ import annotations

import numpy as np
import torch


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """a (N, D), b (M, D) -> FD of the Gaussians fitted to them (float64; sqrtm's tiny imaginary part dropped)."""
    import warnings

    from scipy import linalg

    a, b = (np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64) for v in (a, b))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer samples than dimensions make Σ₁Σ₂ singular: handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # offset both diagonals, as the FID reference code does
            off = np.eye(len(s1)) * 1e-6
            covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class PenultimateFeatures:
    """The input of a classifier's last nn.Linear (its penultimate features), captured by a forward hook."""

    def __init__(self, model: torch.nn.Module):
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not last:
            raise ValueError("the classifier has no linear layer")
        self.value: torch.Tensor | None = None
        self.handle = last[-1].register_forward_hook(lambda m, inp, out: setattr(self, "value", inp[0].detach()))

    def close(self) -> None:
        self.handle.remove()

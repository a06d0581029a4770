"""Distances between two sets of features, here a dlforge classifier's penultimate layer instead of Inception's.

Fréchet distance (Heusel et al., 2017, "FID"): with means μ and covariances Σ,
FD = ‖μ₁ - μ₂‖² + Tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^½). It is biased upwards by a small sample count, so only figures
from equal counts compare.
Kernel distance (Bińkowski et al., 2018, "KID"): the unbiased MMD² with the cubic polynomial kernel
k(x, y) = (x·y / D + 1)³, averaged over random subsets. Its expectation does not depend on the sample count
(0 for two samples of one distribution), so it also compares a few hundred images fairly. Written here
(torchmetrics' version needs torch-fidelity's Inception network and weights, which cannot be downloaded)."""
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


def kernel_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, subsets: int = 50,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """a (N, D), b (M, D) -> (mean, standard deviation) of the unbiased MMD² over `subsets` random subsets
    of each, as in the KID reference code (float64). A subset holds min(subset_size, N/2, M/2) rows, so
    that the subsets differ and their spread says how far the figure can be trusted at this sample count."""
    a, b = (np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64) for v in (a, b))
    if min(len(a), len(b)) < 4:
        raise ValueError("the kernel distance needs at least 4 samples in each set")
    m, rng = min(subset_size, len(a) // 2, len(b) // 2), np.random.default_rng(seed)
    out = [mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
           for _ in range(subsets)]
    return float(np.mean(out)), float(np.std(out))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """x, y (m, D) -> the unbiased MMD² with k(u, v) = (u·v / D + 1)³ (the diagonals of k(x, x), k(y, y) left out)."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    off = m * (m - 1)
    return float((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())


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

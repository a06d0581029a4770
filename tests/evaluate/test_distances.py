"""Fréchet and kernel distances between feature sets, against closed forms and a direct computation."""
import numpy as np
import pytest

from dlforge.evaluate.frechet import frechet_distance, kernel_distance, mmd2_unbiased


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    # for diagonal covariances FD = ‖μ₁ − μ₂‖² + Σ (σ₁ − σ₂)²
    rng = np.random.default_rng(0)
    mu1, mu2, s1, s2 = np.zeros(4), np.array([1.0, 0, -2, 0.5]), np.array([1, 2, 0.5, 1.0]), np.array([1, 1, 1, 3.0])
    a, b = rng.normal(mu1, s1, (200_000, 4)), rng.normal(mu2, s2, (200_000, 4))
    want = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(want, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


def test_kernel_distance_is_the_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 3)), rng.normal(1.0, 1.0, size=(7, 3))
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / 42
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(7)) / 49
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    # subsets of half the rows differ from each other: a spread, around the same expectation
    mean, std = kernel_distance(np.tile(x, (2, 1)), np.tile(y, (2, 1)), subsets=20, subset_size=1000)
    assert std > 0


def test_kernel_distance_is_unbiased_where_the_frechet_distance_is_not():
    rng = np.random.default_rng(2)
    same = [(rng.normal(size=(60, 16)), rng.normal(size=(60, 16))) for _ in range(20)]
    # two samples of one distribution: the Fréchet distance at 60 rows in 16 dimensions is far from 0 ...
    assert np.mean([frechet_distance(a, b) for a, b in same]) > 1.0
    # ... the kernel distance averages to 0 (within its standard error), and a real shift stands out
    kid = [kernel_distance(a, b, subsets=1)[0] for a, b in same]
    assert abs(np.mean(kid)) < 3 * np.std(kid) / np.sqrt(len(kid))
    shifted = kernel_distance(rng.normal(size=(60, 16)), rng.normal(0.5, 1.0, size=(60, 16)), subsets=1)[0]
    assert shifted > max(kid)
    with pytest.raises(ValueError, match="at least 4"):
        kernel_distance(np.zeros((3, 3)), np.zeros((5, 3)))

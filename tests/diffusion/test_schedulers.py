"""DDPM and DDIM against their closed-form formulas (Ho et al., 2020; Song et al., 2021)."""
import math

import pytest
import torch

from dlforge.diffusion.schedulers import DDIMScheduler, DDPMScheduler, make_betas
from dlforge.errors import DlforgeError


def oracle(x0: torch.Tensor, sched: DDPMScheduler):
    """The perfect ε-predictor for a known x_0: ε = (x_t - √ᾱ_t x_0) / √(1 - ᾱ_t)."""
    def eps(x_t, t):
        a = sched.alphas_cumprod[t].item()
        return (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
    return eps


def test_alphas_cumprod_and_schedules():
    s = DDPMScheduler(1000, "linear")
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    manual = 1.0
    for t in (0, 1, 500, 999):
        assert s.alphas_cumprod[t].item() == pytest.approx(math.prod(1 - b for b in s.betas[:t + 1].tolist()), rel=1e-12)
    # Nichol & Dhariwal: ᾱ_t = f(t+1) / f(0) with f(t) = cos²((t/T + s)/(1+s) · π/2), away from the clipped end
    c = DDPMScheduler(1000, "cosine")
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 300, 900):
        assert c.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert c.betas.max().item() <= 0.999 and manual == 1.0
    assert s.alphas_cumprod[-1].item() < 1e-4 and c.alphas_cumprod[-1].item() < 1e-6  # ends in (almost) pure noise


def test_add_noise_is_the_composition_of_single_steps():
    """q(x_t | x_0) in closed form equals t steps of q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I):
    mean coefficient Π√(1-β) and variance from var_t = (1-β_t) var_{t-1} + β_t."""
    s = DDPMScheduler(1000, "cosine")
    mean, var = 1.0, 0.0
    for t in range(600):
        b = s.betas[t].item()
        mean, var = math.sqrt(1 - b) * mean, (1 - b) * var + b
    x0, eps = torch.full((1, 1), 0.7, dtype=torch.float64), torch.full((1, 1), -1.3, dtype=torch.float64)
    assert s.add_noise(x0, eps, torch.tensor([599])).item() == pytest.approx(mean * 0.7 + math.sqrt(var) * -1.3, rel=1e-9)
    # and empirically: mean √ᾱ x_0, variance 1 - ᾱ
    g = torch.Generator().manual_seed(0)
    x = s.add_noise(torch.full((200000,), 0.5), torch.randn(200000, generator=g), torch.full((200000,), 300))
    a = s.alphas_cumprod[300].item()
    assert x.mean().item() == pytest.approx(math.sqrt(a) * 0.5, abs=0.01) and x.var().item() == pytest.approx(1 - a, rel=0.02)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_posterior_mean_and_variance_by_bayes(t):
    """q(x_{t-1} | x_t, x_0) ∝ N(x_{t-1}; √ᾱ_{t-1} x_0, 1-ᾱ_{t-1}) · N(x_t; √α_t x_{t-1}, β_t): precision-weighted."""
    s = DDPMScheduler(1000, "linear")
    a_prev, alpha, beta = s.alphas_cumprod[t - 1].item(), s.alphas[t].item(), s.betas[t].item()
    precision = 1 / (1 - a_prev) + alpha / beta
    c0, ct, var = s.posterior(t)
    assert var == pytest.approx(1 / precision, rel=1e-9)
    assert c0 == pytest.approx(math.sqrt(a_prev) / (1 - a_prev) / precision, rel=1e-9)
    assert ct == pytest.approx(math.sqrt(alpha) / beta / precision, rel=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_1000_steps_of_a_perfect_oracle_return_x0(schedule):
    s = DDPMScheduler(1000, schedule)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = oracle(x0, s)
    x = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for t in s.timesteps.tolist():
        x = s.step(eps(x, t), t, x, g)
    assert len(s.timesteps) == 1000 and torch.allclose(x, x0, atol=1e-6)


def test_ddim_eta0_is_deterministic_and_exact_with_an_oracle():
    s = DDIMScheduler(1000, "linear")
    s.set_timesteps(50)
    assert s.timesteps[:3].tolist() == [999, 979, 959] and s.timesteps[-1].item() == 19  # trailing spacing
    model = lambda x, t: torch.tanh(x) * (t / 1000)  # noqa: E731  any function: the sampler must not draw noise
    runs = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        x = torch.linspace(-2, 2, 64).view(1, 1, 8, 8)
        for t in s.timesteps.tolist():
            x = s.step(model(x, t), t, x, eta=0.0, generator=g)
        runs.append(x)
    assert torch.equal(runs[0], runs[1])
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    x = torch.randn(x0.shape, dtype=torch.float64)
    for t in s.timesteps.tolist():
        x = s.step(oracle(x0, s)(x, t), t, x, eta=0.0)
    assert torch.allclose(x, x0, atol=1e-9)


@pytest.mark.parametrize("t", [999, 500, 3, 0])
def test_ddim_eta1_on_every_step_is_the_ddpm_posterior(t):
    ddim, ddpm = DDIMScheduler(1000, "cosine"), DDPMScheduler(1000, "cosine")
    ddim.set_timesteps(1000)
    if t > 0:
        assert ddim.sigma(t, 1.0) ** 2 == pytest.approx(ddpm.posterior(t)[2], rel=1e-9)
    x, eps = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64) * 0.1
    a = ddim.step(eps, t, x, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = ddpm.step(eps, t, x, torch.Generator().manual_seed(5))
    assert torch.allclose(a, b, atol=1e-9)


def test_fewer_ddim_steps_with_an_oracle_still_return_x0_and_ranges_are_checked():
    s = DDIMScheduler(1000, "linear")
    x0 = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 2 - 1
    for n in (1, 7, 1000):
        s.set_timesteps(n)
        x = torch.randn(x0.shape, dtype=torch.float64)
        for t in s.timesteps.tolist():
            x = s.step(oracle(x0, s)(x, t), t, x)
        assert torch.allclose(x, x0, atol=1e-8), n
    for bad in (0, 1001):
        with pytest.raises(DlforgeError, match="--steps: expected 1..1000"):
            s.set_timesteps(bad)
    with pytest.raises(DlforgeError, match="--beta-schedule"):
        make_betas("sigmoid", 1000)


def test_ddim_on_a_model_of_fewer_than_50_timesteps():
    """`train unet-tiny --timesteps 20` failed at its first sample grid: DDIM's default 50 steps > T."""
    s = DDIMScheduler(20)
    assert len(s.timesteps) == 20 and int(s.timesteps[0]) == 19

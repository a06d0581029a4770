"""Noise schedulers: plain classes, no parameters (house rule 4). The denoiser never imports them; the
pipeline owns the loop and calls `set_timesteps`, then `step` for each of `timesteps`.

Forward process (Ho et al., 2020, "DDPM"): q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I), ᾱ_t = Π_{s≤t} (1 - β_s),
so x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε (`add_noise`). The denoiser predicts ε.
Reverse process, DDPM (ancestral): x_{t'} ~ q(x_{t'} | x_t, x̂_0), the Gaussian posterior with
  mean μ̃ = √ᾱ_{t'} β'_t / (1 - ᾱ_t) · x̂_0 + √(1 - β'_t) (1 - ᾱ_{t'}) / (1 - ᾱ_t) · x_t,
  variance β̃ = (1 - ᾱ_{t'}) / (1 - ᾱ_t) · β'_t,  β'_t = 1 - ᾱ_t / ᾱ_{t'}  (= β_t when t' = t - 1),
  x̂_0 = (x_t - √(1 - ᾱ_t) ε̂) / √ᾱ_t.
Reverse process, DDIM (Song et al., 2021): x_{t'} = √ᾱ_{t'} x̂_0 + √(1 - ᾱ_{t'} - σ²) ε̂ + σ z,
  σ = η √((1 - ᾱ_{t'}) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_{t'}): η = 0 is deterministic, η = 1 is DDPM's posterior.
Before t = 0 comes ᾱ = 1 (the clean image). Tables are float64; outputs take x_t's dtype.
Names follow diffusers: betas, alphas, alphas_cumprod, num_train_timesteps, timesteps, add_noise, step.
"""
from __future__ import annotations

import math

import torch

from dlforge.errors import DlforgeError

BETA_SCHEDULES = ("linear", "cosine")
SPACINGS = ("trailing", "leading", "linspace")
SAMPLERS = ("ddim", "ddpm")


def make_betas(schedule: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """linear: β from beta_start to beta_end (Ho et al.; for T=1000). cosine (Nichol & Dhariwal, 2021):
    ᾱ(t) = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2), s = 0.008, β_t = 1 - ᾱ_t/ᾱ_{t-1} ≤ 0.999."""
    if schedule not in BETA_SCHEDULES:
        raise DlforgeError(f"--beta-schedule: expected one of {', '.join(BETA_SCHEDULES)}; got {schedule!r}")
    if T < 2:
        raise DlforgeError(f"--timesteps: expected at least 2, got {T}")
    if schedule == "linear":
        scale = 1000 / T  # the same total noise for any T (improved DDPM's rescaling)
        return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), T, dtype=torch.float64)
    s = 0.008
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def _spaced(T: int, n: int, spacing: str) -> torch.Tensor:
    """n timesteps out of 0..T-1, descending. trailing (Lin et al., 2024, "Common diffusion noise
    schedules and sample steps are flawed"): round(T - k·T/n) - 1, so the first step is T-1, pure noise."""
    if not 1 <= n <= T:
        raise DlforgeError(f"--steps: expected 1..{T} (the model's training timesteps), got {n}")
    if spacing == "trailing":
        ts = torch.round(torch.arange(T, 0, -T / n, dtype=torch.float64)).long() - 1
    elif spacing == "leading":
        ts = (torch.arange(n) * (T // n)).flip(0)
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, n, dtype=torch.float64).round().long().flip(0)
    else:
        raise DlforgeError(f"spacing: expected one of {', '.join(SPACINGS)}; got {spacing!r}")
    return ts[:n]


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z ~ N(0, I) shaped like x, drawn from a (CPU) generator: the same numbers on every device."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def _at(table: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
    """table[t] shaped to broadcast against x (B, C, H, W); t an int or (B,)."""
    t = torch.as_tensor(t, device=table.device)
    v = table[t].to(device=x.device, dtype=x.dtype)
    return v.view(-1, *([1] * (x.dim() - 1))) if v.dim() else v


class DDPMScheduler:
    """Ancestral sampling from the DDPM posterior; `set_timesteps(n < T)` skips steps with the
    general posterior between t and the next timestep t' (β'_t = 1 - ᾱ_t / ᾱ_{t'})."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, clip_sample: bool = True):
        self.num_train_timesteps, self.beta_schedule, self.clip_sample = num_train_timesteps, beta_schedule, clip_sample
        self.betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)  # (T,) float64
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)                            # ᾱ_t
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self._prev: dict[int, int] = {}

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): √ᾱ_t x_0 + √(1 - ᾱ_t) ε, t (B,)."""
        a = _at(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def set_timesteps(self, n: int | None = None, spacing: str = "trailing") -> None:
        n = self.num_train_timesteps if n is None else n
        self.timesteps = _spaced(self.num_train_timesteps, n, spacing)
        ts = self.timesteps.tolist()
        self._prev = {t: (ts[i + 1] if i + 1 < len(ts) else -1) for i, t in enumerate(ts)}

    def prev_timestep(self, t: int) -> int:
        return self._prev.get(int(t), int(t) - 1)

    def alpha_prev(self, t: int) -> torch.Tensor:
        p = self.prev_timestep(t)
        return self.alphas_cumprod[p] if p >= 0 else torch.tensor(1.0, dtype=torch.float64)

    def pred_x0(self, eps: torch.Tensor, t: int, x_t: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t - √(1 - ᾱ_t) ε̂) / √ᾱ_t, clipped to [-1, 1] with clip_sample."""
        a = self.alphas_cumprod[int(t)].item()
        x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
        return x0.clamp(-1, 1) if self.clip_sample else x0

    def posterior(self, t: int) -> tuple[float, float, float]:
        """-> (coefficient of x̂_0, coefficient of x_t, variance β̃) of q(x_{t'} | x_t, x_0)."""
        a, a_prev = self.alphas_cumprod[int(t)].item(), self.alpha_prev(t).item()
        beta = 1 - a / a_prev
        return (math.sqrt(a_prev) * beta / (1 - a), math.sqrt(1 - beta) * (1 - a_prev) / (1 - a),
                (1 - a_prev) / (1 - a) * beta)

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, generator: torch.Generator | None = None,
             eta: float | None = None) -> torch.Tensor:
        """One reverse step x_t -> x_{t'}: the posterior mean plus √β̃ z (no noise at the last step).
        The one step signature of every scheduler; DDPM is DDIM's η = 1 by definition, so eta may only be
        None or 1."""
        if eta is not None and eta != 1:
            raise DlforgeError(f"--eta {eta:g}: the ddpm sampler is η = 1 by definition; use --sampler ddim for "
                               f"another η")
        c0, ct, var = self.posterior(t)
        mean = c0 * self.pred_x0(eps, t, x_t) + ct * x_t
        if self.prev_timestep(t) < 0:
            return mean
        return mean + math.sqrt(var) * _noise(x_t, generator)


class DDIMScheduler(DDPMScheduler):
    """Deterministic (η = 0) or stochastic DDIM sampling on any number of steps; the same ᾱ table."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, clip_sample: bool = True):
        super().__init__(num_train_timesteps, beta_schedule, beta_start, beta_end, clip_sample)
        self.set_timesteps(min(50, num_train_timesteps))  # 50 steps, or every one of a shorter schedule

    def sigma(self, t: int, eta: float) -> float:
        a, a_prev = self.alphas_cumprod[int(t)].item(), self.alpha_prev(t).item()
        return eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, generator: torch.Generator | None = None,
             eta: float | None = None) -> torch.Tensor:
        """One DDIM step x_t -> x_{t'} (Song et al., 2021) with σ = η·√((1-ᾱ')/(1-ᾱ)·(1-ᾱ/ᾱ')); eta None is 0."""
        eta = 0.0 if eta is None else eta
        a, a_prev = self.alphas_cumprod[int(t)].item(), self.alpha_prev(t).item()
        x0 = self.pred_x0(eps, t, x_t)
        if self.clip_sample:  # the ε consistent with the clipped x̂_0
            eps = (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
        sigma = self.sigma(t, eta)
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x_prev = x_prev + sigma * _noise(x_t, generator)
        return x_prev


def make_scheduler(sampler: str, num_train_timesteps: int, beta_schedule: str) -> DDPMScheduler:
    if sampler not in SAMPLERS:
        raise DlforgeError(f"--sampler: expected one of {', '.join(SAMPLERS)}; got {sampler!r}")
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    return cls(num_train_timesteps, beta_schedule)

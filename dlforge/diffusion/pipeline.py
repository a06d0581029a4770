"""Text to image in the reference's three steps: (1) the caption's token ids (or a frozen encoder's
states) condition the denoiser, whose text encoder turns them into states; (2) Gaussian noise
x_T ~ N(0, I); (3) the scheduler's denoising steps, each with classifier-free guidance
(Ho & Salimans, 2022): ε̂ = ε̂(x_t, ∅) + g·(ε̂(x_t, c) - ε̂(x_t, ∅)), both halves in one forward pass of 2B.
g = 1 is the conditional model alone, g = 0 the unconditional one. The pipeline owns the loop; the
scheduler holds no parameters and the denoiser knows no scheduler.
"""
from __future__ import annotations

from typing import Callable

import torch

from dlforge.diffusion.schedulers import DDPMScheduler
from dlforge.errors import DlforgeError

MAX_GUIDANCE = 30.0


def check_guidance(guidance: float) -> None:
    if not 0 <= guidance <= MAX_GUIDANCE:
        raise DlforgeError(f"--guidance: expected a scale in [0, {MAX_GUIDANCE:g}] (1: no guidance), got {guidance}")


def guided_eps(model: torch.nn.Module, x_t: torch.Tensor, t: int, cond: torch.Tensor, null: torch.Tensor,
               guidance: float) -> torch.Tensor:
    """ε̂ with classifier-free guidance; x_t (B, C, H, W), cond/null (B, L) ids or (B, S, D) states."""
    tt = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
    if guidance == 1:
        return model(x_t, tt, cond).float()
    if guidance == 0:
        return model(x_t, tt, null).float()
    eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([tt, tt]), torch.cat([cond, null])).float().chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


@torch.inference_mode()
def sample(model: torch.nn.Module, scheduler: DDPMScheduler, cond: torch.Tensor, null: torch.Tensor,
           shape: tuple[int, ...], guidance: float = 3.0, eta: float | None = None, generator: torch.Generator | None = None,
           frames: int = 0, callback: Callable[[int], None] | None = None) -> tuple[torch.Tensor, list]:
    """-> (x_0 (B, C, H, W) in [-1, 1], [(t, x_t)] at `frames` evenly spaced steps, noise first).
    The scheduler's timesteps must be set (set_timesteps)."""
    check_guidance(guidance)
    model.eval()
    device = next(model.parameters()).device
    x = torch.randn(shape, generator=generator).to(device)
    ts = scheduler.timesteps.tolist()
    keep = {round(i * (len(ts) - 1) / max(frames - 2, 1)) for i in range(frames - 1)} if frames > 1 else set()
    traj = [(ts[0], x.cpu())] if frames else []                      # labelled by the timestep they are at
    for i, t in enumerate(ts):
        eps = guided_eps(model, x, t, cond, null, guidance)
        x = scheduler.step(eps, t, x, generator=generator, eta=eta)
        if i in keep:
            traj.append((max(scheduler.prev_timestep(t), 0), x.cpu()))
        if callback:
            callback(i)
    return x.clamp(-1, 1), traj


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 [0, 255]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

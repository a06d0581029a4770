"""Batched image transforms on tensors (the reference's torchvision pipeline, without per-sample PIL).

train: resize -> RandomRotation(±deg) -> ColorJitter(brightness, contrast) -> [0,1] -> gray->3ch -> Normalize
test:  resize -> [0,1] -> gray->3ch -> Normalize
Grayscale images are augmented and normalised on their single channel and expanded last: the
result equals transforming three identical channels, at a third of the cost.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from dlforge.errors import DlforgeError


@dataclass
class TransformConfig:
    img_size: int = 48
    channels: int = 3            # channels the model sees (grayscale is repeated to 3, as in the reference)
    mean: tuple[float, ...] = (0.1307,)
    std: tuple[float, ...] = (0.3081,)
    rotation: float = 10.0       # degrees, training only
    brightness: float = 0.2      # factor drawn from [1-b, 1+b], training only
    contrast: float = 0.2
    channels_last: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.img_size <= 1024:
            raise DlforgeError(f"--img-size: expected 1..1024 pixels, got {self.img_size}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    def to_dict(self) -> dict:
        return asdict(self)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size), bilinear with antialiasing (as PIL's resize)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def random_rotation(x: torch.Tensor, degrees: float, g: torch.Generator | None) -> torch.Tensor:
    """Rotate each image by its own angle ~ U(-degrees, degrees) about the centre, zeros outside."""
    angle = (torch.rand(x.shape[0], generator=g) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, g: torch.Generator | None) -> torch.Tensor:
    """torchvision ColorJitter on [0,1] images: brightness b·x, contrast c·x + (1-c)·mean(gray(x)),
    each factor ~ U(1-f, 1+f), clamped to [0,1], the two applied in a random order per image."""
    b = x.shape[0]
    fb = (1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * brightness)
    fc = (1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * contrast)
    first = torch.rand(b, 1, 1, 1, generator=g) < 0.5

    def bright(t: torch.Tensor) -> torch.Tensor:
        return (t * fb).clamp_(0, 1)

    def contr(t: torch.Tensor) -> torch.Tensor:
        gray = t if t.shape[1] == 1 else (0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3])
        m = gray.mean(dim=(1, 2, 3), keepdim=True)
        return (fc * t + (1 - fc) * m).clamp_(0, 1)

    return torch.where(first, contr(bright(x)), bright(contr(x)))


class ImageTransform:
    """Callable on a uint8 batch (B, C, H, W) -> normalised float (B, channels, S, S)."""

    def __init__(self, cfg: TransformConfig, train: bool):
        self.cfg, self.train = cfg, train
        c = len(cfg.mean)
        self.mean = torch.tensor(cfg.mean).view(1, c, 1, 1)
        self.inv_std = 1 / torch.tensor(cfg.std).view(1, c, 1, 1)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.cfg
        if x.shape[1] not in (1, 3):
            raise DlforgeError(f"images must have 1 or 3 channels, got {x.shape[1]}")
        x = resize(x.float().div_(255), cfg.img_size)
        if self.train:
            if cfg.rotation:
                x = random_rotation(x, cfg.rotation, g)
            if cfg.brightness or cfg.contrast:
                x = color_jitter(x, cfg.brightness, cfg.contrast, g)
        x = (x - self.mean) * self.inv_std if x.shape[1] == self.mean.shape[1] else (x - self.mean.mean()) * self.inv_std.mean()
        if x.shape[1] != cfg.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, cfg.channels, -1, -1)  # grayscale -> 3 identical channels
            else:  # RGB -> gray (ITU-R 601), for a model built for one channel
                x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

"""Batch augmentation on tensors (runs on the GPU when the batch is there).

One random geometry per sample is applied to all of its channels, so stacked regions
(H, R1, R2 as channels) stay aligned. Inputs are float tensors in [0, 1], [B, C, H, W].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from boneage.config import AugmentConfig


def random_affine(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    b = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device="cpu").to(dev) * (hi - lo) + lo

    ang = u(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180)
    s = u(*cfg.scale)
    tx, ty = u(-cfg.shift, cfg.shift) * 2, u(-cfg.shift, cfg.shift) * 2
    flip = (u(0, 1) < cfg.hflip_p).float() * -2 + 1  # -1 = flipped
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_photometric(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    b = x.shape[0]
    shape = (b, 1, 1, 1)

    def u(lo: float, hi: float) -> torch.Tensor:
        r = torch.rand(shape, generator=generator, device="cpu").to(x.device, x.dtype)
        return r * (hi - lo) + lo

    gamma = u(*cfg.gamma)
    x = x.clamp(0, 1) ** gamma
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(*cfg.contrast) + mean + u(-cfg.brightness, cfg.brightness)
    return x.clamp(0, 1)


def augment(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    return random_photometric(random_affine(x, cfg, generator), cfg, generator)


def hide_patches(
    x: torch.Tensor, grid: int, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hide-and-seek (Singh & Lee, ICCV 2017): split each image into grid×grid patches and
    replace each with the image mean with probability p. A classifier trained so cannot
    rely on the single most discriminative part, and its CAM spreads over the whole object.
    """
    if grid <= 0 or p <= 0:
        return x
    b, _, h, w = x.shape
    keep = (torch.rand(b, 1, grid, grid, generator=generator) >= p).to(x.device, x.dtype)
    keep = torch.nn.functional.interpolate(keep, size=(h, w), mode="nearest")
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return x * keep + mean * (1 - keep)

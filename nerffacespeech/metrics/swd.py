"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al., ProGAN, 2018).

Needs no pretrained network, so it shows learning anywhere. Per pyramid level (the image
resolution down to 16 px): 7x7 patches at random positions, each descriptor set normalised per
channel, then the 1-D Wasserstein distance along random unit directions, averaged. Reported
x1000 as in ProGAN. Lower is better; 0 means the patch distributions agree.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 7
PATCHES_PER_IMAGE = 128
MIN_RESOLUTION = 16


def _gauss_kernel(channels: int, device: torch.device) -> torch.Tensor:
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device) / 16
    return (taps[:, None] * taps[None, :]).expand(channels, 1, 5, 5).contiguous()


def _down(x: torch.Tensor) -> torch.Tensor:
    kernel = _gauss_kernel(x.shape[1], x.device)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, stride=2, groups=x.shape[1])


def _up(x: torch.Tensor) -> torch.Tensor:
    kernel = _gauss_kernel(x.shape[1], x.device) * 4
    up = torch.zeros(*x.shape[:2], x.shape[2] * 2, x.shape[3] * 2, device=x.device, dtype=x.dtype)
    up[:, :, ::2, ::2] = x
    return F.conv2d(F.pad(up, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def laplacian_pyramid(images: torch.Tensor) -> list[torch.Tensor]:
    """Band-pass levels from full resolution down, the last one the low-pass residual at 16 px."""
    levels, current = [], images.float()
    while current.shape[-1] > MIN_RESOLUTION:
        smaller = _down(current)
        levels.append(current - _up(smaller))
        current = smaller
    levels.append(current)
    return levels


def patch_descriptors(images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """Per pyramid level, (N * 128, 3 * 7 * 7) raw patch descriptors of images in [-1, 1]."""
    out = []
    for level in laplacian_pyramid(images):
        n, c, h, w = level.shape
        ys = torch.randint(0, h - PATCH + 1, (n, PATCHES_PER_IMAGE), generator=generator).to(level.device)
        xs = torch.randint(0, w - PATCH + 1, (n, PATCHES_PER_IMAGE), generator=generator).to(level.device)
        offsets = torch.arange(PATCH, device=level.device)
        rows = (ys[..., None] + offsets)[..., :, None]                          # (N, P, 7, 1)
        cols = (xs[..., None] + offsets)[..., None, :]                          # (N, P, 1, 7)
        batch = torch.arange(n, device=level.device)[:, None, None, None]
        patches = level.permute(0, 2, 3, 1)[batch, rows, cols]                  # (N, P, 7, 7, C)
        out.append(patches.permute(0, 1, 4, 2, 3).reshape(n * PATCHES_PER_IMAGE, -1))
    return out


def _normalise(desc: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit deviation per colour channel across the descriptor set."""
    d = desc.reshape(desc.shape[0], 3, -1)
    mean = d.mean(dim=(0, 2), keepdim=True)
    std = d.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
    return ((d - mean) / std).reshape_as(desc)


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row sorted; NumPy's sort on CPU (about 10x faster than torch's there)."""
    if x.is_cuda:
        return torch.sort(x, dim=1).values
    return torch.from_numpy(np.sort(x.numpy(), axis=1))


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator, directions: int = 512,
                       repeats: int = 4) -> float:
    """Mean over random directions of the 1-D Wasserstein distance between projections of a and b."""
    count = min(a.shape[0], b.shape[0])
    a, b = a[:count], b[:count]
    total = 0.0
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], directions, generator=generator).to(a.device)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa, pb = _sorted_rows(dirs.T @ a.T), _sorted_rows(dirs.T @ b.T)   # (directions, count)
        total += (pa - pb).abs().mean().item()
    return total / repeats


def swd(real_descriptors: list[torch.Tensor], fake_descriptors: list[torch.Tensor], seed: int = 0) -> list[float]:
    """SWD x1000 per pyramid level (finest first) between two descriptor sets."""
    generator = torch.Generator().manual_seed(seed)
    return [1e3 * sliced_wasserstein(_normalise(r), _normalise(f), generator)
            for r, f in zip(real_descriptors, fake_descriptors)]

"""Style-modulated radiance fields: the foreground NeRF and the NeRF++ inverse-sphere background.

Both are the same network shape (positional encoding, modulated MLP, a density head and a
feature head); they differ in input (3-D points vs 4-D inverse-sphere coordinates) and size.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers import ModulatedLinear


def positional_encoding(x: torch.Tensor, octaves: int) -> torch.Tensor:
    """[sin(2^k pi x), cos(2^k pi x)] for k < octaves, computed in fp32 (bf16 sines of large
    arguments are noise), shape (..., 2 * octaves * D)."""
    freqs = (2.0 ** torch.arange(octaves, device=x.device, dtype=torch.float32)) * math.pi
    angles = (x.float()[..., None, :] * freqs[:, None]).flatten(-2)
    return torch.cat([angles.sin(), angles.cos()], -1)


class RadianceField(nn.Module):
    """(B, N, in_dim) points and (B, num_ws, w_dim) styles -> density (B, N) and features (B, N, C)."""

    def __init__(self, in_dim: int, hidden: int, blocks: int, out_channels: int, octaves: int, w_dim: int):
        super().__init__()
        self.octaves = octaves
        widths = [2 * octaves * in_dim] + [hidden] * blocks
        self.layers = nn.ModuleList([ModulatedLinear(widths[i], widths[i + 1], w_dim) for i in range(blocks)])
        self.density = ModulatedLinear(hidden, 1, w_dim, demodulate=False, activation=False)
        self.features = ModulatedLinear(hidden, out_channels, w_dim, demodulate=False, activation=False)
        self.num_ws = blocks + 2

    def forward(self, points: torch.Tensor, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = positional_encoding(points, self.octaves).to(ws.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i])
        sigma = self.density(x, ws[:, -2]).squeeze(-1).float()
        return torch.nn.functional.softplus(sigma), self.features(x, ws[:, -1])

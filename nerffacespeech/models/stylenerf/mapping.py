"""The mapping network: latent z to intermediate style w (StyleGAN2, learning-rate multiplier 0.01)."""
from __future__ import annotations

import torch
from torch import nn

from .layers import EqualLinear


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z (B, z_dim) -> w (B, w_dim) through `layers` leaky-ReLU fully connected layers."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, lr_mul: float = 0.01):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.layers = nn.Sequential(*[EqualLinear(dims[i], dims[i + 1], lr_mul=lr_mul, activation=True)
                                      for i in range(layers)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(normalize_2nd_moment(z))

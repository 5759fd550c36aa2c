"""LipaintNet: [w, expression] -> w' in the generator's W space, so the generator fills the inside
of a mouth that the ray deformation opens.

A 4-layer ReLU MLP (w_dim + 64 -> w_dim -> w_dim -> w_dim -> w_dim, 576 -> 512 x 4 at w_dim 512)
applied to every style vector. The residual is taken relative to the reference expression,
w' = w + f(w, e) - f(w, e_ref), so at the reference expression w' = w exactly: the source
identity is rendered unchanged whenever the mouth is as in the source image.
"""
from __future__ import annotations

import torch
from torch import nn

EXP_DIM = 64


class LipaintNet(nn.Module):
    def __init__(self, w_dim: int, layers: int = 4):
        super().__init__()
        dims = [w_dim + EXP_DIM] + [w_dim] * layers
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.ReLU())
        self.mlp = nn.Sequential(*mods)
        nn.init.zeros_(self.mlp[-1].weight)         # starts as the identity map
        nn.init.zeros_(self.mlp[-1].bias)

    def _f(self, ws: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        e = exp[:, None, :].expand(-1, ws.shape[1], -1).to(ws.dtype)
        return self.mlp(torch.cat([ws, e], -1))

    def forward(self, ws: torch.Tensor, exp: torch.Tensor, ref_exp: torch.Tensor) -> torch.Tensor:
        """(B, num_ws, w_dim) styles for expressions `exp` (B, 64) of a source with `ref_exp` (B, 64) or (64,)."""
        ref = ref_exp.expand_as(exp)
        return ws + (self._f(ws, exp) - self._f(ws, ref))

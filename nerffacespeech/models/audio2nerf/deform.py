"""Ray deformation: NeRF sample points follow the 3DMM mesh from the reference expression to a
target expression.

For a sample point x the nearest vertex of the deformed mesh (reference + displacement) is found
in the generator's world; x is moved back by that vertex's displacement d, weighted by a Gaussian
falloff of the distance, x' = x - exp(-|x - v|^2 / 2 sigma^2) d, and the frozen generator is
queried at x'. Points near a moving vertex therefore take the canonical (reference) appearance
from where that vertex came from; points far from the face are untouched. Only the `max_vertices`
most mobile vertices (largest expression-basis norm) take part, which bounds the distance
matrix for the 35,709-vertex BFM.
"""
from __future__ import annotations

from typing import Callable

import torch

from .face import FaceBasis


class RayDeformation:
    def __init__(self, face: FaceBasis, sigma: float, max_vertices: int):
        mobility = face.exp_basis.norm(dim=(1, 2))
        keep = torch.argsort(mobility, descending=True)[:max_vertices]
        self.mean = face.world(face.mean_shape[keep])                           # (V, 3)
        self.basis = face.world(face.exp_basis[keep].transpose(1, 2)).transpose(1, 2)  # (V, 3, 64)
        self.sigma = sigma

    def to(self, device) -> "RayDeformation":
        self.mean, self.basis = self.mean.to(device), self.basis.to(device)
        return self

    def warp(self, exp: torch.Tensor, ref_exp: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A point warp for Generator(point_warp=...): (B, P, 3) -> (B, P, 3) for expressions (B, 64)."""
        ref = ref_exp.float().expand_as(exp)
        origin = self.mean + torch.einsum("vcd,bd->bvc", self.basis, ref)            # (B, V, 3)
        moved = torch.einsum("vcd,bd->bvc", self.basis, exp.float() - ref)          # (B, V, 3)
        target = origin + moved

        def apply(points: torch.Tensor) -> torch.Tensor:
            p = points.float()
            dist = torch.cdist(p, target)                                             # (B, P, V)
            nearest, index = dist.min(-1)
            d = torch.gather(moved, 1, index[..., None].expand(-1, -1, 3))
            weight = torch.exp(-nearest.square() / (2 * self.sigma ** 2))[..., None]
            return (p - weight * d).to(points.dtype)

        return apply

"""Cameras on a sphere looking at the origin, and the rays through chosen pixels.

Conventions: world up is +z; a camera at yaw 0, pitch 0 sits on +x. Pixel coordinates (u, v)
span [-1, 1] over the image, u to the right and v up, at pixel centres, so a ray grid at the
NeRF's 32 px and single pixels of the upsampled image describe the same picture. Ray
directions have camera-space z = -1, so the ray parameter t is the depth along the optical axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import draws
from .draws import Rows


@dataclass(frozen=True)
class CameraPrior:
    """The Gaussian pose prior and lens of the original's FFHQ setting."""

    fov_degrees: float = 12.0
    yaw_std: float = 0.3
    pitch_std: float = 0.155
    radius: float = 1.0


def sample_angles(batch: int, prior: CameraPrior, device: torch.device, rows: Rows | None = None) -> torch.Tensor:
    """(B, 2) yaw and pitch in radians drawn from the Gaussian prior (`rows`: see `draws`)."""
    noise = draws.randn((batch, 2), device, rows)
    return torch.stack([noise[:, 0] * prior.yaw_std, noise[:, 1] * prior.pitch_std], 1)


def camera_frames(angles: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera origins (B, 3) and camera-to-world rotations (B, 3, 3) for yaw/pitch `angles`."""
    yaw, pitch = angles.float().unbind(-1)
    polar = math.pi / 2 - pitch
    eye = torch.stack([polar.sin() * yaw.cos(), polar.sin() * yaw.sin(), polar.cos()], -1) * radius
    forward = torch.nn.functional.normalize(eye, dim=-1)              # camera looks along -forward
    up = torch.zeros_like(forward)
    up[:, 2] = 1.0
    right = torch.nn.functional.normalize(torch.cross(up, forward, dim=-1), dim=-1)
    true_up = torch.cross(forward, right, dim=-1)
    return eye, torch.stack([right, true_up, forward], dim=-1)


def grid_uv(resolution: int, device: torch.device) -> torch.Tensor:
    """(R*R, 2) pixel-centre coordinates of a resolution x resolution image, row-major from the top."""
    centres = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    v, u = torch.meshgrid(-centres, centres, indexing="ij")
    return torch.stack([u, v], -1).reshape(-1, 2)


def pixel_uv(rows: torch.Tensor, cols: torch.Tensor, resolution: int) -> torch.Tensor:
    """(..., 2) pixel-centre coordinates of integer pixel positions."""
    u = (cols.float() + 0.5) / resolution * 2 - 1
    v = 1 - (rows.float() + 0.5) / resolution * 2
    return torch.stack([u, v], -1)


def rays(uv: torch.Tensor, origins: torch.Tensor, rotations: torch.Tensor,
         fov_degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and directions (B, N, 3) through `uv` (N, 2) or (B, N, 2) for each camera."""
    scale = math.tan(math.radians(fov_degrees) / 2)
    uv = uv.expand(origins.shape[0], -1, -1) if uv.dim() == 2 else uv
    local = torch.cat([uv * scale, -torch.ones_like(uv[..., :1])], -1)        # (B, N, 3)
    directions = torch.einsum("bij,bnj->bni", rotations, local)
    return origins[:, None, :].expand_as(directions), directions

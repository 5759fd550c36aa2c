"""Triangle rasterization on NVIDIA's nvdiffrast (its CUDA rasterizer; no OpenGL or EGL).

Same conventions and outputs as `render.TorchRasterizer`: pixel (row i, column j) has its centre
at screen x = j, y = i, the nearest depth wins, barycentrics are screen-space (every vertex gets
w = 1, so nvdiffrast's perspective correction is the identity) and gradients reach vertex
positions and attributes; no antialiasing (Deep3DFaceRecon's renderer uses none either).
nvdiffrast puts pixel j's centre at clip x = (2j + 1) / S - 1 and row i at clip y =
(2i + 1) / S - 1 (row 0 of its output is clip y = -1), so screen y maps to clip y unflipped.
"""
from __future__ import annotations

import torch


class NvdiffrastRasterizer:
    """Rasterize + interpolate through nvdiffrast on one CUDA device."""

    name = "nvdiffrast"

    def __init__(self, device: torch.device | str):
        import nvdiffrast.torch as dr       # not on PyPI: docs/PREPROCESSING.md says how to install it

        self._dr = dr
        self._context = dr.RasterizeCudaContext(device=torch.device(device))

    def __call__(self, screen: torch.Tensor, triangles: torch.Tensor, size: int,
                 attributes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, S, C) interpolated `attributes` (B, N, C) and the (B, S, S) triangle id per
        pixel (-1 where empty) of `screen` (B, N, 3): pixel x, pixel y, depth (larger is farther)."""
        tri = triangles.to(torch.int32).contiguous()
        raster, _ = self._dr.rasterize(self._context, clip_space(screen, size), tri, (size, size), grad_db=False)
        values, _ = self._dr.interpolate(attributes.float().contiguous(), raster, tri)
        return values, raster[..., 3].long() - 1


def clip_space(screen: torch.Tensor, size: int) -> torch.Tensor:
    """(B, N, 4) clip positions with w = 1; depth mapped linearly into [-0.9, 0.9] over the
    whole batch (an increasing affine map keeps every depth comparison; it carries no gradient)."""
    depth = screen[..., 2].detach()
    lo, hi = depth.amin(), depth.amax()
    z = (depth - lo) / (hi - lo).clamp(min=1e-12) * 1.8 - 0.9
    xy = (2 * screen[..., :2] + 1) / size - 1
    return torch.cat([xy, z.unsqueeze(-1), torch.ones_like(z).unsqueeze(-1)], -1).contiguous()

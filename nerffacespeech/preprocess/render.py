"""Triangle rasterization for the 3DMM photometric loss, in pure PyTorch (CPU or GPU).

`TorchRasterizer` is the backend every device has; `render_nvdiffrast` is the fast one on CUDA
(`renderers.choose` picks).

Which triangle covers each pixel is found without gradients (a z-buffer built with
scatter_reduce); the barycentric weights of that pixel are then recomputed from the vertex
positions with gradients, so colours and positions both receive them, as with nvdiffrast's
rasterize + interpolate (no antialiasing of silhouettes in either). Pixel (row i, column j) has
its centre at x = j, y = i; interpolation is in screen space.
"""
from __future__ import annotations

import torch

CHUNK_ELEMENTS = 4_000_000       # bounds the memory of one z-buffer pass


class TorchRasterizer:
    """Rasterize + interpolate in one call, the interface both backends share."""

    name = "torch"

    def __call__(self, screen: torch.Tensor, triangles: torch.Tensor, size: int,
                 attributes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, S, C) interpolated `attributes` (B, N, C) and the (B, S, S) triangle id per
        pixel (-1 where empty) of `screen` (B, N, 3) as in `rasterize`."""
        tri_id, bary = rasterize(screen, triangles, size)
        return interpolate(attributes, triangles, tri_id, bary), tri_id


def rasterize(screen: torch.Tensor, triangles: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangle id per pixel (B, H, W; -1 where empty) and differentiable barycentrics (B, H, W, 3).

    `screen` is (B, N, 3): pixel x, pixel y, and depth (larger is farther)."""
    with torch.no_grad():
        tri_id = _visible_triangles(screen.detach(), triangles, size)
    bary = _barycentrics(screen, triangles, tri_id, size)
    return tri_id, bary


def interpolate(attributes: torch.Tensor, triangles: torch.Tensor, tri_id: torch.Tensor,
                bary: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) per-pixel attributes from (B, N, C) per-vertex ones (zero where empty)."""
    b, h, w = tri_id.shape
    safe = tri_id.clamp(min=0)
    corners = triangles[safe.reshape(b, -1)]                                  # (B, HW, 3)
    values = torch.gather(attributes, 1, corners.reshape(b, -1, 1).expand(-1, -1, attributes.shape[-1]))
    values = values.reshape(b, h * w, 3, -1)
    out = (values * bary.reshape(b, h * w, 3, 1)).sum(2).reshape(b, h, w, -1)
    return out * (tri_id >= 0).unsqueeze(-1)


def _edge_weights(p: torch.Tensor, a: torch.Tensor, bb: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Barycentric weights of points p in triangles (a, b, c), all (..., 2)."""
    v0, v1, v2 = bb - a, c - a, p - a
    den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    den = torch.where(den.abs() < 1e-12, torch.full_like(den, 1e-12), den)
    wb = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
    wc = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
    return torch.stack([1 - wb - wc, wb, wc], -1)


def _visible_triangles(screen: torch.Tensor, triangles: torch.Tensor, size: int) -> torch.Tensor:
    b, device = screen.shape[0], screen.device
    corners = screen[:, triangles]                                           # (B, F, 3, 3)
    lo = corners[..., :2].amin(2).ceil().clamp(0, size - 1).long()
    hi = corners[..., :2].amax(2).floor().clamp(0, size - 1).long()
    span = int((hi - lo + 1).clamp(min=0).max().item()) if triangles.numel() else 0
    span = max(1, min(span, size))
    grid = torch.stack(torch.meshgrid(torch.arange(span, device=device), torch.arange(span, device=device),
                                      indexing="xy"), -1).reshape(-1, 2)       # (K², 2) as (dx, dy)
    n_faces = triangles.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // max(1, b * grid.shape[0]))
    zbuf = torch.full((b, size * size), float("inf"), device=device)
    ids = torch.full((b, size * size), -1, dtype=torch.long, device=device)
    for pass_ in ("depth", "id"):
        for start in range(0, n_faces, chunk):
            sl = slice(start, min(start + chunk, n_faces))
            c = corners[:, sl]
            pix = lo[:, sl, None, :] + grid[None, None]                      # (B, Fc, K², 2)
            inside_box = (pix <= hi[:, sl, None, :]).all(-1)
            w = _edge_weights(pix.float(), c[:, :, None, 0, :2], c[:, :, None, 1, :2], c[:, :, None, 2, :2])
            inside = inside_box & (w >= -1e-6).all(-1)
            depth = (w * c[:, :, None, :, 2]).sum(-1)
            flat = pix[..., 1] * size + pix[..., 0]
            batch = torch.arange(b, device=device)[:, None, None].expand_as(flat)
            sel = inside.nonzero(as_tuple=True)
            where = (batch[sel], flat[sel])
            if pass_ == "depth":
                zbuf.view(-1).scatter_reduce_(0, where[0] * size * size + where[1], depth[sel], "amin")
            else:
                hit = depth[sel] <= zbuf[where] + 1e-7
                tri = torch.arange(start, sl.stop, device=device)[None, :, None].expand_as(flat)[sel]
                ids.view(-1).scatter_reduce_(0, (where[0] * size * size + where[1])[hit], tri[hit], "amax")
    return ids.reshape(b, size, size)


def _barycentrics(screen: torch.Tensor, triangles: torch.Tensor, tri_id: torch.Tensor, size: int) -> torch.Tensor:
    b = screen.shape[0]
    ys, xs = torch.meshgrid(torch.arange(size, device=screen.device), torch.arange(size, device=screen.device),
                            indexing="ij")
    p = torch.stack([xs, ys], -1).float().reshape(1, -1, 2).expand(b, -1, -1)
    corners = triangles[tri_id.clamp(min=0).reshape(b, -1)]                   # (B, HW, 3)
    xy = torch.gather(screen[..., :2], 1, corners.reshape(b, -1, 1).expand(-1, -1, 2)).reshape(b, -1, 3, 2)
    w = _edge_weights(p, xy[:, :, 0], xy[:, :, 1], xy[:, :, 2])
    return (w * (tri_id.reshape(b, -1, 1) >= 0)).reshape(b, size, size, 3)

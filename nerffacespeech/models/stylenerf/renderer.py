"""Volume rendering of feature rays: stratified coarse samples, hierarchical (inverse-CDF) fine
samples, and NeRF++ background samples beyond the foreground, all batched over every ray.

Depths are in the units of the camera's optical axis; sample spacings are normalised by the
foreground depth range (and the background's inverse-radius range), so densities of order one
are already fairly opaque. The compositing runs in fp32 whatever the network dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import draws
from .draws import Rows

Field = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]   # points -> (sigma, features)


@dataclass(frozen=True)
class RaySampling:
    near: float
    far: float
    coarse: int
    fine: int
    background: int
    bg_start: float


def stratified(batch_shape: tuple[int, ...], n: int, randomize: bool, device: torch.device,
               rows: Rows | None = None) -> torch.Tensor:
    """(…, n) positions in (0, 1): one per equal bin, jittered when `randomize`, else bin centres."""
    offsets = draws.rand((*batch_shape, n), device, rows) if randomize else torch.full((*batch_shape, n), 0.5,
                                                                                      device=device)
    return (torch.arange(n, device=device, dtype=torch.float32) + offsets) / n


def composite_weights(sigma: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha-compositing weights (…, S) and the transmittance left after the last sample (…).

    Transmittance is exp(-cumsum(sigma * delta)), not a cumprod of (1 - alpha): cumprod's backward
    waits for the GPU (it checks the input for zeros) and its double backward is quadratic.
    """
    optical = sigma * deltas
    alpha = 1 - torch.exp(-optical)
    survive = torch.exp(-torch.cat([torch.zeros_like(optical[..., :1]), optical.cumsum(-1)], -1))
    return alpha * survive[..., :-1], survive[..., -1]


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, randomize: bool,
               rows: Rows | None = None) -> torch.Tensor:
    """n depths (…, n) drawn from the piecewise-constant density `weights` over `bins` (…, S+1)."""
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], -1).contiguous()
    u = stratified(cdf.shape[:-1], n, randomize, cdf.device, rows).contiguous()
    upper = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    lower = upper - 1
    cdf_lo, cdf_hi = cdf.gather(-1, lower), cdf.gather(-1, upper)
    bin_lo, bin_hi = bins.gather(-1, lower), bins.gather(-1, upper)
    frac = (u - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(1e-8)
    return bin_lo + frac * (bin_hi - bin_lo)


def render_rays(origins: torch.Tensor, directions: torch.Tensor, foreground: Field, background: Field,
                sampling: RaySampling, randomize: bool, rows: Rows | None = None) -> torch.Tensor:
    """Composited features (B, N, C) of rays (B, N, 3): foreground first, background behind it
    (`rows`: the batch's place in a global batch, for the jitter's draws: `draws`)."""
    batch, count = origins.shape[:2]
    span = sampling.far - sampling.near

    def fg_points(t: torch.Tensor) -> torch.Tensor:       # (B, N, S) depths -> (B, N*S, 3) world points
        return (origins[:, :, None] + directions[:, :, None] * t[..., None]).reshape(batch, -1, 3)

    t_coarse = sampling.near + span * stratified((batch, count), sampling.coarse, randomize, origins.device, rows)
    sigma_c, feat_c = foreground(fg_points(t_coarse))
    sigma_c = sigma_c.reshape(batch, count, -1)
    feat_c = feat_c.reshape(batch, count, sampling.coarse, -1)
    if sampling.fine > 0:
        with torch.no_grad():
            weights, _ = composite_weights(sigma_c, _deltas(t_coarse, sampling.far) / span)
            mids = torch.cat([t_coarse.new_full((batch, count, 1), sampling.near),
                              (t_coarse[..., 1:] + t_coarse[..., :-1]) / 2,
                              t_coarse.new_full((batch, count, 1), sampling.far)], -1)
            t_fine = sample_pdf(mids, weights, sampling.fine, randomize, rows)
        sigma_f, feat_f = foreground(fg_points(t_fine))
        t_all, order = torch.sort(torch.cat([t_coarse, t_fine], -1), -1)
        sigma = torch.cat([sigma_c, sigma_f.reshape(batch, count, -1)], -1).gather(-1, order)
        feats = torch.cat([feat_c, feat_f.reshape(batch, count, sampling.fine, -1)], 2)
        feats = feats.gather(2, order[..., None].expand(-1, -1, -1, feats.shape[-1]))
    else:
        t_all, sigma, feats = t_coarse, sigma_c, feat_c
    weights, transmittance = composite_weights(sigma, _deltas(t_all, sampling.far) / span)
    out = torch.einsum("bns,bnsc->bnc", weights.to(feats.dtype), feats).float()
    if sampling.background > 0:
        out = out + transmittance[..., None] * _render_background(origins, directions, background, sampling,
                                                                   randomize, rows)
    return out


def _deltas(t: torch.Tensor, far: float) -> torch.Tensor:
    """Spacing after each sample; the last one reaches the far bound."""
    return torch.cat([t[..., 1:] - t[..., :-1], (far - t[..., -1:]).clamp_min(0)], -1)


def _render_background(origins: torch.Tensor, directions: torch.Tensor, background: Field,
                       sampling: RaySampling, randomize: bool, rows: Rows | None) -> torch.Tensor:
    """NeRF++: points on spheres of radius 1/s for inverse radii s in (0, bg_start], as (x/r, s)."""
    batch, count = origins.shape[:2]
    n = sampling.background
    s = sampling.bg_start * (1 - stratified((batch, count), n, randomize, origins.device, rows))   # near -> far
    unit = torch.nn.functional.normalize(directions.float(), dim=-1)
    o = origins.float()
    b = (o * unit).sum(-1, keepdim=True)                                     # (B, N, 1)
    c = o.square().sum(-1, keepdim=True)
    radius = 1 / s
    t = -b + torch.sqrt((b.square() - c + radius.square()).clamp_min(0))    # ray meets the sphere
    pts = (o[:, :, None] + unit[:, :, None] * t[..., None]) * s[..., None]  # unit vectors x / r
    inputs = torch.cat([pts, s[..., None]], -1).reshape(batch, -1, 4)
    sigma, feats = background(inputs)
    sigma = sigma.reshape(batch, count, n)
    feats = feats.reshape(batch, count, n, -1)
    deltas = torch.cat([(s[..., :-1] - s[..., 1:]) / sampling.bg_start, torch.full_like(s[..., :1], 1e10)], -1)
    weights, _ = composite_weights(sigma, deltas)
    return torch.einsum("bns,bnsc->bnc", weights.to(feats.dtype), feats).float()

"""The StyleNeRF generator: mapping, foreground + background radiance fields, volume rendering of
a low-resolution feature map, and the 2D upsampler to the output resolution.

One forward renders the full ray grid and, on request, a few extra rays through random pixels
of the output image for the NeRF-path regularisation (the NeRF's RGB there should match the
upsampled image), in the same batched renderer call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nerffacespeech.configs.stylenerf import ModelConfig

from . import camera, draws
from .draws import Rows
from .layers import EqualLinear
from .mapping import MappingNetwork
from .nerf import RadianceField
from .renderer import RaySampling, render_rays
from .upsampler import Upsampler


@dataclass
class GeneratorOutput:
    img: torch.Tensor                   # (B, 3, r, r) in about [-1, 1], fp32
    ws: torch.Tensor                    # (B, num_ws, w_dim) styles used
    nerf_path_loss: torch.Tensor | None  # mean squared error of the NeRF-path pixels, or None


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, cfg.mapping_layers)
        self.foreground = RadianceField(3, cfg.fg_hidden, cfg.fg_blocks, cfg.feature_channels, cfg.frequencies,
                                        cfg.w_dim)
        self.background = RadianceField(4, cfg.bg_hidden, cfg.bg_blocks, cfg.feature_channels, cfg.frequencies,
                                         cfg.w_dim)
        self.nerf_rgb = EqualLinear(cfg.feature_channels, 3)
        self.upsampler = Upsampler(cfg.feature_channels, cfg.upsampler_resolutions, cfg.up_channel_base,
                                   cfg.up_channel_max, cfg.w_dim, cfg.up_kernel)
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))       # tracked on the EMA copy only
        self.num_ws = self.foreground.num_ws + self.background.num_ws + self.upsampler.num_ws
        self.prior = camera.CameraPrior(cfg.fov_degrees, cfg.yaw_std, cfg.pitch_std)
        self.sampling = RaySampling(cfg.depth_near, cfg.depth_far, cfg.coarse_samples, cfg.fine_samples,
                                    cfg.bg_samples, cfg.bg_start)
        self.activation_checkpointing = False
        self.channels_last = False

    @property
    def stages(self) -> int:
        """Upsampler blocks at full resolution (the progressive stage count)."""
        return len(self.upsampler.blocks)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.activation_checkpointing = enabled
        self.upsampler.activation_checkpointing = enabled

    def styles(self, z: torch.Tensor, mix_z: torch.Tensor | None = None,
               mix_cutoff: int | torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        """(B, num_ws, w_dim) styles; from index `mix_cutoff` (one, or (B,) per sample) on they
        come from `mix_z` (style mixing).

        `mix_z` is mapped even when `mix_cutoff` is None, so every rank runs the same sequence
        of module calls whatever its random draw (ZeRO-3 gathers weights per module call). The
        cutoff may be a 0-d device tensor, so that a captured CUDA graph takes it as an input.
        """
        dtype = self.mapping.layers[0].weight.dtype
        w = self.mapping((z if mix_z is None else torch.cat([z, mix_z])).to(dtype))    # both latents, one call
        if truncation != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, truncation)
        if mix_z is None:
            return w[:, None].repeat(1, self.num_ws, 1)
        w, w2 = w.split(z.shape[0])
        cutoff = torch.as_tensor(self.num_ws if mix_cutoff is None else mix_cutoff, device=w.device)
        first = torch.arange(self.num_ws, device=w.device) < cutoff.reshape(-1, 1)   # (1 or B, num_ws) from w
        return torch.where(first[..., None], w[:, None], w2[:, None])

    def forward(self, z: torch.Tensor | None = None, ws: torch.Tensor | None = None, *, stage: int | None = None,
                fade: float = 1.0, angles: torch.Tensor | None = None, mix_z: torch.Tensor | None = None,
                mix_cutoff: int | torch.Tensor | None = None, truncation: float = 1.0, nerf_path_pixels: int = 0,
                randomize: bool | None = None, point_warp=None, rows: Rows | None = None) -> GeneratorOutput:
        """Images for latents `z` (or styles `ws`) at progressive `stage` (default: full resolution).

        `angles` (B, 2) yaw/pitch default to draws from the camera prior; `randomize` (default:
        training mode) jitters the ray samples; `point_warp` maps foreground sample points
        (B, P, 3) to where the field is queried (audio2nerf's ray deformation); `rows` places the
        batch in a training step's global batch, so that its random draws follow the samples (`draws`).
        """
        if ws is None:
            ws = self.styles(z, mix_z, mix_cutoff, truncation)
        stage = self.stages if stage is None else stage
        randomize = self.training if randomize is None else randomize
        batch, device = ws.shape[0], ws.device
        if angles is None:
            angles = camera.sample_angles(batch, self.prior, device, rows)
        n_fg, n_bg = self.foreground.num_ws, self.background.num_ws
        ws_fg, ws_bg, ws_up = ws[:, :n_fg], ws[:, n_fg:n_fg + n_bg], ws[:, n_fg + n_bg:]

        res = self.cfg.nerf_resolution
        out_res = res * 2 ** stage
        uv = camera.grid_uv(res, device).expand(batch, -1, -1)
        if nerf_path_pixels:
            pix_rows, pix_cols = draws.randint(out_res, (batch, 2, nerf_path_pixels), device, rows).unbind(1)
            uv = torch.cat([uv, camera.pixel_uv(pix_rows, pix_cols, out_res)], 1)
        origins, directions = camera.rays(uv, *camera.camera_frames(angles, self.prior.radius), self.prior.fov_degrees)
        feats = self._render(origins, directions, ws_fg, ws_bg, randomize, point_warp, rows)  # (B, N, C) fp32
        nerf_rgb = self.nerf_rgb(feats.to(ws.dtype)).float()                         # (B, N, 3)

        grid = res * res
        x = feats[:, :grid].to(ws.dtype).transpose(1, 2).reshape(batch, -1, res, res)
        img = nerf_rgb[:, :grid].transpose(1, 2).reshape(batch, 3, res, res)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        img = self.upsampler(x, img, ws_up, stage, fade)

        nerf_path_loss = None
        if nerf_path_pixels:
            picked = img[torch.arange(batch, device=device)[:, None], :, pix_rows, pix_cols]    # (B, K, 3)
            nerf_path_loss = (picked - nerf_rgb[:, grid:]).square().mean()
        return GeneratorOutput(img=img, ws=ws, nerf_path_loss=nerf_path_loss)

    def _render(self, origins, directions, ws_fg, ws_bg, randomize: bool, point_warp,
                rows: Rows | None) -> torch.Tensor:
        def fg(points):
            if point_warp is not None:
                points = point_warp(points)
            if self.activation_checkpointing and torch.is_grad_enabled():
                return checkpoint(self.foreground, points, ws_fg, use_reentrant=False)
            return self.foreground(points, ws_fg)

        def bg(points):
            return self.background(points, ws_bg)

        return render_rays(origins, directions, fg, bg, self.sampling, randomize, rows)

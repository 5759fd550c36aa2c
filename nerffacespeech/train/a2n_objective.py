"""The audio2nerf training objective as one module (what the engine wraps): the networks, the
per-clip latents, and the losses of a micro-batch.

Audio path (every sequence): expression L1 against the fitted coefficients, the lip loss (mouth
landmarks of the mesh posed with predicted vs fitted expression, px at 224) and the temporal
loss (L1 between predicted and fitted frame-to-frame differences).

LipaintNet (the middle frame of the first `render_batch` sequences): each clip has a learned
latent w_c (a GAN inversion of its identity learned jointly); the frozen generator renders
LipaintNet(w_c, e_t) under the ray deformation e_ref -> e_t at the frame's camera, and the L1 to
the real aligned frame, weighted `mouth_weight` inside the mouth box, is the loss. The video
supervises the mouth; the generator and the deformation stay fixed. A second term keeps the rest
of the face as it was: outside the mouth box, the L1 between that rendering and the one of w_c
itself (same deformation, no LipaintNet), weighted `keep_weight`. Without it LipaintNet also
absorbs what a frame's expression happens to correlate with elsewhere in the image (head pose,
lighting), and generated clips change everywhere as the mouth moves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nerffacespeech.configs.audio2nerf import ModelConfig
from nerffacespeech.models.audio2nerf.deform import RayDeformation
from nerffacespeech.models.audio2nerf.face import FaceBasis, lip_distance
from nerffacespeech.models.audio2nerf.network import Audio2NeRF


@dataclass
class Renderer:
    """The frozen parts: generator, ray deformation, face basis (never under the engine)."""

    generator: nn.Module
    deformation: RayDeformation
    face: FaceBasis


@dataclass(frozen=True)
class Weights:
    exp: float
    lip: float
    smooth: float
    photo: float
    mouth: float
    keep: float
    render_batch: int

    @classmethod
    def of(cls, cfg) -> "Weights":
        """The loss weights of a TrainConfig."""
        return cls(cfg.exp_weight, cfg.lip_weight, cfg.smooth_weight, cfg.photo_weight, cfg.mouth_weight,
                   cfg.keep_weight, cfg.render_batch)


class Objective(nn.Module):
    def __init__(self, cfg: ModelConfig, n_clips: int, w_dim: int, latent_lr_mult: float):
        super().__init__()
        self.net = Audio2NeRF(cfg)
        self.latents = nn.Parameter(torch.zeros(n_clips, w_dim))
        self.register_buffer("w_init", torch.zeros(w_dim))
        self.latent_lr_mult = latent_lr_mult

    def clip_ws(self, clip: torch.Tensor, num_ws: int) -> torch.Tensor:
        """(B, num_ws, w_dim) styles of clips' learned latents."""
        w = self.w_init.float() + self.latent_lr_mult * self.latents[clip].float()
        return w[:, None].expand(-1, num_ws, -1)

    def forward(self, batch: dict[str, torch.Tensor], renderer: Renderer, weights: Weights):
        b, s = batch["exp"].shape[:2]
        fit = batch["exp"]
        pred = self.net.expressions(batch["mel"].flatten(0, 1), batch["ref"].repeat_interleave(s, 0),
                                    batch["blink"].flatten()).reshape(b, s, -1)
        logs = {"exp_l1": (pred - fit).abs().mean(), "lip_px": lip_distance(renderer.face, pred, fit).mean(),
                "temporal": ((pred[:, 1:] - pred[:, :-1]) - (fit[:, 1:] - fit[:, :-1])).abs().mean()}
        loss = weights.exp * logs["exp_l1"] + weights.lip * logs["lip_px"] + weights.smooth * logs["temporal"]
        if weights.render_batch:
            r = weights.render_batch
            args = (batch["clip"][:r], fit[:r, s // 2], batch["ref"][:r], batch["angles"][:r], renderer)
            img = self.render(*args)
            mouth = batch["mouth"][:r]
            mask = 1 + (weights.mouth - 1) * mouth
            logs["photo_l1"] = (mask * (img - batch["frame"][:r]).abs()).sum() / (mask.sum() * 3)
            loss = loss + weights.photo * logs["photo_l1"]
            if weights.keep:
                with torch.no_grad():
                    unstyled = self.render(*args, lipaint=False)
                rest = 1 - mouth
                logs["keep_l1"] = (rest * (img - unstyled).abs()).sum() / (rest.sum() * 3).clamp_min(1)
                loss = loss + weights.keep * logs["keep_l1"]
        return loss, logs

    def render(self, clip, exp, ref, angles, renderer: Renderer, lipaint: bool = True) -> torch.Tensor:
        """Frames of clips' latents through LipaintNet (unless `lipaint` is False) and the ray
        deformation (fp32 generator)."""
        ws = self.clip_ws(clip, renderer.generator.num_ws).to(self.latents.dtype)
        styled = (self.net.lipaint(ws, exp, ref) if lipaint else ws).float()
        out = renderer.generator(ws=styled, angles=angles, randomize=False,
                                 point_warp=renderer.deformation.warp(exp, ref))
        return out.img

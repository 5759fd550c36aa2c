"""Identities for generation: styles ws (1, num_ws, w_dim) from a seed or from a face photo.

Seeds draw z as the original scripts do (`np.random.RandomState(seed).randn(1, z_dim)`) and
apply truncation psi toward the generator's tracked w_avg. A photo is aligned like the training
data (FFHQ crop at the generator's resolution, preprocessing's landmarker) and projected into W:
one w shared by every layer, started at the mean of 1000 mapped z, optimised with Adam
(learning rate ramped down by a cosine) on the pixel MSE at full and half resolution, the
camera frontal. No per-identity fine-tuning of the generator (PTI) is done.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nerffacespeech.preprocess import align, images, landmarks
from nerffacespeech.preprocess.errors import BadInput
from nerffacespeech.pretrained.manifest import default_root


def seed_styles(generator, seed: int, truncation: float) -> torch.Tensor:
    """(1, num_ws, w_dim) styles for `seed` with truncation psi."""
    device = generator.w_avg.device
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, generator.cfg.z_dim)).float().to(device)
    with torch.no_grad():
        return generator.styles(z, truncation=truncation).float()


def find_face(path: Path, pretrained_root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The photo (H, W, 3) uint8 and its one face's 68 landmarks; BadInput if no usable face."""
    photo = images.load_frame(Path(path), min_size=32)
    root = pretrained_root or default_root()
    finder = landmarks.make_landmarker("auto", root)
    try:
        face = landmarks.single_face(finder.detect([photo])[0], finder.min_score)
    except BadInput as exc:
        raise BadInput(exc.kind, f"{Path(path).name}: {exc.detail}") from None
    return photo, face.landmarks


def aligned_face(photo: np.ndarray, points: np.ndarray, resolution: int) -> np.ndarray:
    """(R, R, 3) uint8 FFHQ-aligned crop, as the training images were made."""
    return align.align_faces([photo], points[None], resolution)[0][0]


def project(generator, target: np.ndarray, steps: int, lr: float, seed: int = 0,
            progress=None) -> tuple[torch.Tensor, list[float]]:
    """Styles (1, num_ws, w_dim) reproducing the aligned `target` crop, and the loss per step."""
    device = generator.w_avg.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(1000, generator.cfg.z_dim, generator=gen).to(device)
        w_mean = generator.mapping(z.to(generator.w_avg.dtype)).float().mean(0, keepdim=True)
    image = torch.from_numpy(target).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1
    w = w_mean.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999))
    angles = torch.zeros(1, 2, device=device)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        ws = w[:, None].expand(-1, generator.num_ws, -1)
        out = generator(ws=ws.to(generator.w_avg.dtype), angles=angles, randomize=False).img.float()
        loss = F.mse_loss(out, image) + F.mse_loss(F.avg_pool2d(out, 2), F.avg_pool2d(image, 2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
    return w.detach()[:, None].expand(-1, generator.num_ws, -1).contiguous(), losses

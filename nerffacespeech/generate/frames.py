"""The per-frame loop: expressions from mel windows, smoothed over time, rendered in batches.

Frame i reads its 16-frame mel window, audio2nerf maps it to a 64-d expression, expressions are
smoothed by a Gaussian over frames (sigma `smoothing_frames`, 0 = off; removes the per-window
jitter of the audio encoder), and batches of `batch_size` frames are rendered with the
identity's styles and each frame's camera.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d


def smooth(expressions: torch.Tensor, sigma_frames: float) -> torch.Tensor:
    """(T, 64) expressions smoothed along time (edges held), same dtype and device."""
    if sigma_frames <= 0 or expressions.shape[0] < 2:
        return expressions
    smoothed = gaussian_filter1d(expressions.detach().cpu().double().numpy(), sigma_frames, axis=0, mode="nearest")
    return torch.from_numpy(smoothed).to(expressions)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8 RGB."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def render_frames(render: Callable, ws: torch.Tensor, expressions: torch.Tensor, ref_exp: torch.Tensor,
                  angles: torch.Tensor, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 frame batches of `render(ws, exps, ref_exp, angles)` over the clip, in order."""
    for start in range(0, expressions.shape[0], batch_size):
        exps = expressions[start:start + batch_size]
        with torch.no_grad():
            images = render(ws.expand(exps.shape[0], -1, -1), exps, ref_exp, angles[start:start + batch_size])
        yield to_uint8(images)

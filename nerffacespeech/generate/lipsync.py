"""Does the mouth move with the speech? How far the mouth region is from its rest state in each
frame against the audio's energy envelope (Pearson correlation), for generated clips with a
fixed camera. The rest state is the mouth in the quietest frames of the speech.

A mouth that opens with the loudness is far from rest in loud frames and at rest in quiet ones,
whatever the shape of its response; its frame-to-frame change (what this measured first) peaks
on the flanks of syllables instead, and its correlation with the energy swung from -0.18 to 0.26
with the training seed and the CPU's thread count alone (docs/AUDIO2NERF.md).

The mouth box comes from the morphable model's lip landmarks (neutral expression) projected
through the generator's camera, so it needs no face detector on tiny, blurry renders.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from nerffacespeech.models.stylenerf import camera
from nerffacespeech.preprocess.audio import SAMPLE_RATE


def mouth_box(face, resolution: int, fov_degrees: float, yaw: float = 0.0, pitch: float = 0.0,
              margin: float = 0.5) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) pixels around the lips, widened by `margin` of their size each side."""
    points = face.world(face.landmarks(torch.zeros(64, device=face.mean_shape.device))).cpu().float()
    eye, rotation = camera.camera_frames(torch.tensor([[yaw, pitch]]), 1.0)
    local = (points - eye) @ rotation[0]                      # camera space: x right, y up, -z forward
    scale = math.tan(math.radians(fov_degrees) / 2)
    u, v = local[:, 0] / -local[:, 2] / scale, local[:, 1] / -local[:, 2] / scale
    cols, rows = (u + 1) / 2 * resolution, (1 - v) / 2 * resolution
    pad_r, pad_c = margin * float(rows.max() - rows.min()), margin * float(cols.max() - cols.min())
    clamp = lambda x: int(min(max(x, 0), resolution))
    return (clamp(rows.min() - pad_r), clamp(math.ceil(rows.max() + pad_r) + 1),
            clamp(cols.min() - pad_c), clamp(math.ceil(cols.max() + pad_c) + 1))


def energy_envelope(speech: np.ndarray, n_frames: int, fps: int = 25) -> np.ndarray:
    """(n_frames,) RMS of the speech over each video frame's 40 ms."""
    hop = SAMPLE_RATE // fps
    padded = np.pad(speech, (0, max(0, n_frames * hop - len(speech))))[:n_frames * hop]
    return np.sqrt((padded.reshape(n_frames, hop).astype(np.float64) ** 2).mean(1))


REST_FRAMES = 5        # the quietest frames of the speech: the mouth at rest is their median


def mouth_displacement(frames: np.ndarray, box: tuple[int, int, int, int], energy: np.ndarray) -> np.ndarray:
    """(T,) mean absolute difference of the mouth box of each of the (T, H, W, 3) frames from the
    mouth at rest: the box's median over the REST_FRAMES frames of lowest `energy`."""
    r0, r1, c0, c1 = box
    mouth = frames[:, r0:r1, c0:c1].astype(np.float64)
    rest = np.median(mouth[np.argsort(energy, kind="stable")[:REST_FRAMES]], axis=0)
    return np.abs(mouth - rest).mean(axis=(1, 2, 3))


def correlation(frames: np.ndarray, speech: np.ndarray, box: tuple[int, int, int, int],
                shift_frames: int = 0) -> float:
    """Pearson r between the mouth's distance from rest in frame t and the speech energy of frame t
    (of frame t - `shift_frames`, cyclically: a control that keeps the energy's statistics but
    not its timing)."""
    energy = np.roll(energy_envelope(speech, len(frames)), shift_frames)
    displacement = mouth_displacement(frames, box, energy)
    if displacement.std() == 0 or energy.std() == 0:
        return 0.0
    return float(np.corrcoef(displacement, energy)[0, 1])

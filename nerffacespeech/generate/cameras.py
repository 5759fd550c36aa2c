"""Camera paths for a generated clip: (T, 2) yaw/pitch in the generator's convention (radians).

The generator's frontal camera is yaw 0, pitch 0 (camera on +x, z up). Preprocessing's
poses.json uses StyleNeRF's angular convention, frontal θ = φ = π/2, so yaw = θ − π/2 and
pitch = π/2 − φ. A driving clip shorter than the audio is played forward and back (ping-pong)
so the head never jumps.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nerffacespeech.data.processed import read_metadata_frames
from nerffacespeech.preprocess.errors import BadInput


def fixed(n_frames: int, yaw: float, pitch: float) -> np.ndarray:
    return np.tile(np.array([[yaw, pitch]], np.float32), (n_frames, 1))


def gentle(n_frames: int, yaw: float, pitch: float, yaw_amp: float, pitch_amp: float, period_s: float,
           fps: int = 25) -> np.ndarray:
    """A slow sway around (yaw, pitch): sines of the period and 1.6x it, starting at the centre."""
    t = np.arange(n_frames) / fps
    path = np.stack([yaw + yaw_amp * np.sin(2 * math.pi * t / period_s),
                     pitch + pitch_amp * np.sin(2 * math.pi * t / (1.6 * period_s))], 1)
    return path.astype(np.float32)


def from_poses_json(path: Path, n_frames: int, clip: str | None = None) -> np.ndarray:
    """The yaw/pitch of a preprocessed driving clip's frames, in order, ping-ponged to n_frames."""
    path = Path(path)
    try:
        frames = read_metadata_frames(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput("poses_unreadable", f"{path}: not a preprocess poses.json ({exc})") from None
    clips = sorted({key.rsplit("/", 1)[0] for key in frames})
    if not clips:
        raise BadInput("poses_empty", f"{path} holds no frames")
    clip = clip or clips[0]
    keys = sorted(k for k in frames if k.rsplit("/", 1)[0] == clip)
    if not keys:
        raise BadInput("poses_clip", f"{path} has no clip {clip!r}; it has {clips[:5]}")
    theta = np.array([frames[k]["yaw"] for k in keys])
    phi = np.array([frames[k]["pitch"] for k in keys])
    angles = np.stack([theta - math.pi / 2, math.pi / 2 - phi], 1).astype(np.float32)
    cycle = np.concatenate([np.arange(len(keys)), np.arange(len(keys) - 2, 0, -1)]) if len(keys) > 2 \
        else np.arange(len(keys))
    return angles[cycle[np.arange(n_frames) % len(cycle)]]

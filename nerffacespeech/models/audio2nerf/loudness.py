"""How loud a video frame's speech is, in linear amplitude, read off its normalised log-mel window.

The mouth opens with the speech's amplitude (the jaw drive of the sample data is the RMS), while
the encoder sees log-mel: a log response moves the mouth as much in a quiet reverb tail as in a
loud syllable. This feature hands the expression head the amplitude directly: the mean level in
dB of the 8 mel frames (100 ms) around the frame, so noise that is symmetric in dB (the training
augmentation's) leaves it unbiased, turned back into an amplitude relative to `REF_DB`.
"""
from __future__ import annotations

import torch

from nerffacespeech.preprocess.audio import MAX_ABS, MIN_LEVEL_DB

FRAMES = slice(4, 12)      # mel frames of a 16-frame window around its video frame (window starts 2 frames early)
REF_DB = -74.0             # mel level (dB) that reads 1; loud speech in the sample data reads ~5


def loudness(mel: torch.Tensor) -> torch.Tensor:
    """(N,) amplitudes of (N, 1, 80, 16) normalised log-mel windows (values in [-4, 4])."""
    level = mel[..., FRAMES].float().mean(dim=(1, 2, 3))
    db = (level + MAX_ABS) * (-MIN_LEVEL_DB / (2 * MAX_ABS)) + MIN_LEVEL_DB
    return torch.pow(10.0, (db - REF_DB) / 20)

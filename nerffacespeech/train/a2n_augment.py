"""Audio augmentation for audio2nerf's training windows (never for evaluation).

Lip motion follows how loud and how voiced the speech is, not the recording level, the noise
floor or any one band; a few minutes of video let the encoder memorise windows instead. Each
sequence gets one level shift (a recording's gain) and one masked band of consecutive mel
channels (SpecAugment-style, filled with the sequence's mean), every value a little Gaussian
noise. Draws come from the batch's generator, so a resumed run augments exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nerffacespeech.preprocess.audio import MAX_ABS, MIN_LEVEL_DB

UNITS_PER_DB = 2 * MAX_ABS / -MIN_LEVEL_DB       # the normalised log-mel's slope in dB


@dataclass(frozen=True)
class MelAugment:
    """The augmentation's settings (TrainConfig's augment_*); calling it augments a batch."""

    gain_db: float          # level shift, uniform in ±gain_db per sequence
    noise: float            # std of Gaussian noise, normalised log-mel units ([-4, 4] range)
    freq_mask: int          # at most this many consecutive mel channels masked per sequence

    @property
    def active(self) -> bool:
        """Whether any setting is non-zero (all zero: batches pass through untouched)."""
        return bool(self.gain_db or self.noise or self.freq_mask)

    def __call__(self, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copy of (B, S, 80, 16) CPU windows of B sequences (the batch before it moves
        to the device; `generator` is a CPU generator). The level shift is clamped to the
        features' [-4, 4] range; the noise goes on after, so it also dithers silence."""
        b, _, channels, _ = mel.shape
        gain = (torch.rand(b, generator=generator) * 2 - 1) * self.gain_db * UNITS_PER_DB
        out = (mel + gain[:, None, None, None]).clamp(-MAX_ABS, MAX_ABS)
        width = torch.randint(self.freq_mask + 1, (b,), generator=generator)
        start = (torch.rand(b, generator=generator) * (channels - width + 1)).long()
        band = torch.arange(channels)[None]
        masked = (band >= start[:, None]) & (band < (start + width)[:, None])          # (B, 80)
        out = torch.where(masked[:, None, :, None], out.mean(dim=(1, 2, 3), keepdim=True), out)
        return out + self.noise * torch.randn(out.shape, generator=generator)

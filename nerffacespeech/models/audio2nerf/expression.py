"""The expression head: audio features + reference expression + blink ratio -> 64 BFM expression
coefficients (SadTalker audio2exp's inputs), predicted as an offset from the reference, plus a
term linear in the frame's speech amplitude (`loudness`): the mouth opens with the amplitude, and
a network on log-mel features alone learns a log response that moves the mouth in quiet tails."""
from __future__ import annotations

import torch
from torch import nn

from .lipaint import EXP_DIM


class ExpressionHead(nn.Module):
    def __init__(self, audio_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(audio_dim + EXP_DIM + 1, audio_dim), nn.LeakyReLU(0.2),
                                 nn.Linear(audio_dim, EXP_DIM))
        self.loudness = nn.Linear(1, EXP_DIM, bias=False)
        for layer in (self.mlp[-1], self.loudness):     # starts at the reference expression
            nn.init.zeros_(layer.weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @torch.no_grad()
    def fit_loudness(self, loudness: torch.Tensor, offsets: torch.Tensor) -> None:
        """Start the loudness term (and the output bias) at the least-squares line of expression
        offsets (N, 64) from the reference on amplitudes (N,): the mouth follows the speech's
        amplitude from step 0, the same on every machine and seed, and training refines it."""
        x = torch.stack([torch.ones_like(loudness), loudness], 1).double()
        coef = torch.linalg.lstsq(x, offsets.double()).solution              # (2, 64)
        self.mlp[-1].bias.copy_(coef[0])
        self.loudness.weight.copy_(coef[1][:, None])

    def forward(self, audio: torch.Tensor, ref_exp: torch.Tensor, blink: torch.Tensor,
                loudness: torch.Tensor) -> torch.Tensor:
        """(B, 64) expressions from (B, audio_dim) features, (B, 64) references, (B,) blink ratios
        and (B,) speech amplitudes."""
        ref = ref_exp.to(audio.dtype)
        offset = self.mlp(torch.cat([audio, ref, blink.to(audio.dtype)[:, None]], -1))
        return ref + offset + self.loudness(loudness.to(audio.dtype)[:, None])

"""The expression head: audio features + reference expression + blink ratio -> 64 BFM expression
coefficients (SadTalker audio2exp's inputs), predicted as an offset from the reference."""
from __future__ import annotations

import torch
from torch import nn

from .lipaint import EXP_DIM


class ExpressionHead(nn.Module):
    def __init__(self, audio_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(audio_dim + EXP_DIM + 1, audio_dim), nn.LeakyReLU(0.2),
                                 nn.Linear(audio_dim, EXP_DIM))
        nn.init.zeros_(self.mlp[-1].weight)         # starts at the reference expression
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, audio: torch.Tensor, ref_exp: torch.Tensor, blink: torch.Tensor) -> torch.Tensor:
        """(B, 64) expressions from (B, audio_dim) features, (B, 64) references and (B,) blink ratios."""
        ref = ref_exp.to(audio.dtype)
        return ref + self.mlp(torch.cat([audio, ref, blink.to(audio.dtype)[:, None]], -1))

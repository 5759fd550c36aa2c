"""The audio encoder: a Wav2Lip-style conv stack over an 80x16 mel window, then a projection to
`audio_dim` features.

At `width` 1 the 13 blocks have SadTalker audio2exp's shapes and names (`blocks.N.conv_block.0`
Conv2d, `.1` BatchNorm2d), so `nerffacespeech.pretrained.sadtalker.init_audio_encoder` loads
them; smaller widths are for CPU tests.
"""
from __future__ import annotations

import torch
from torch import nn

from nerffacespeech.pretrained.sadtalker import AUDIO_ENCODER_BLOCKS

# Strides and paddings of the 13 blocks (Wav2Lip's audio encoder): 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1.
STRIDES = (1, 1, 1, (3, 1), 1, 1, 3, 1, 1, (3, 2), 1, 1, 1)
PADDINGS = (1,) * 11 + (0, 0)


class ConvBlock(nn.Module):
    """Conv + BatchNorm + ReLU, with a residual connection when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride, padding: int):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = cin == cout and stride == 1 and kernel == 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        return torch.relu(out + x if self.residual else out)


class AudioEncoder(nn.Module):
    """(B, 1, 80, 16) mel windows -> (B, audio_dim) features."""

    def __init__(self, audio_dim: int, width: float = 1.0):
        super().__init__()
        scale = lambda c: c if c == 1 else max(4, int(round(c * width)))
        self.blocks = nn.Sequential(*[ConvBlock(scale(cin), scale(cout), k, s, p) for (cin, cout, k), s, p
                                      in zip(AUDIO_ENCODER_BLOCKS, STRIDES, PADDINGS)])
        self.out_channels = scale(AUDIO_ENCODER_BLOCKS[-1][1])
        self.project = nn.Linear(self.out_channels, audio_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.project(self.blocks(mel).flatten(1))

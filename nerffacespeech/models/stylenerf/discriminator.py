"""The progressive discriminator: residual blocks from the image resolution down to 4x4, a
from-RGB entry at every resolution from the 32 px low-resolution head up, and a StyleGAN2
epilogue (minibatch standard deviation, conv, two fully connected layers).

During progressive growing the input arrives at the generator's current resolution; the
newest block fades in against the from-RGB path of the half-resolution image.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nerffacespeech.configs.stylenerf import ModelConfig

from .layers import EqualConv2d, EqualLinear, downsample2


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions and a 2x downsample, with a 1x1 residual path."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = downsample2(self.conv1(self.conv0(x)))
        return (y + self.skip(downsample2(x))) * (1 / math.sqrt(2))


def minibatch_std(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append the mean standard deviation over groups of `group` consecutive samples as a channel."""
    b, c, h, w = x.shape
    g = min(group, b)
    y = x.float().reshape(b // g, g, c, h, w)
    y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])          # (B/G,)
    y = y[:, None].expand(-1, g).reshape(b, 1, 1, 1).expand(b, 1, h, w)    # no host sync (CUDA graphs)
    return torch.cat([x, y.to(x.dtype)], 1)


class Discriminator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

        def channels(res: int) -> int:
            return min(cfg.d_channel_base // res, cfg.d_channel_max)

        self.resolutions = [2 ** i for i in range(int(math.log2(cfg.resolution)), 2, -1)]   # r ... 8
        self.blocks = nn.ModuleDict({str(r): DiscriminatorBlock(channels(r), channels(r // 2))
                                     for r in self.resolutions})
        entries = [r for r in self.resolutions if r >= min(cfg.nerf_resolution, cfg.resolution)]
        self.from_rgb = nn.ModuleDict({str(r): EqualConv2d(3, channels(r), 1) for r in entries})
        c4 = channels(4)
        self.mbstd_group = cfg.mbstd_group
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, 1)
        self.channels_last = False

    def forward(self, img: torch.Tensor, fade: float = 1.0) -> torch.Tensor:
        """Logits (B,) for images at any entry resolution; `fade` < 1 blends in the newest block."""
        dtype = self.out.weight.dtype
        res = img.shape[-1]
        img = img.to(dtype)
        if self.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        x = self.blocks[str(res)](self.from_rgb[str(res)](img))
        if fade < 1.0 and str(res // 2) in self.from_rgb:
            x = self.from_rgb[str(res // 2)](downsample2(img)).lerp(x, fade)
        for r in self.resolutions:
            if r < res:
                x = self.blocks[str(r)](x)
        x = self.conv(minibatch_std(x, self.mbstd_group))
        return self.out(self.fc(x.flatten(1))).squeeze(1).float()

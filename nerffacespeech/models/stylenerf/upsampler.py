"""The 2D upsampler: from the rendered feature map to the output image, one block per octave.

Each block doubles the resolution with a pixel shuffle concatenated to nearest-neighbour copies
and a light blur, then runs modulated convolutions (1x1 by default, as the original, which keeps
the upsampler close to 3D-consistent) and adds an RGB residual to the bilinearly upsampled
image (StyleGAN2 "skip" output). Progressive growing scales the newest block's residual by a
fade factor and skips the blocks above the current resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import ModulatedConv2d, blur


def upsample_features(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C + C/4, 2H, 2W): nearest copies and the pixel-shuffled channels, blurred."""
    return blur(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), F.pixel_shuffle(x, 2)], 1))


def upsample_image(img: torch.Tensor) -> torch.Tensor:
    return F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False)


class UpBlock(nn.Module):
    """One octave: features and image at r/2 -> at r."""

    num_ws = 3

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel: int):
        super().__init__()
        self.conv0 = ModulatedConv2d(in_channels + in_channels // 4, out_channels, w_dim, kernel=1)
        self.conv1 = ModulatedConv2d(out_channels, out_channels, w_dim, kernel=kernel)
        self.torgb = ModulatedConv2d(out_channels, 3, w_dim, kernel=1, demodulate=False, activation=False)

    def forward(self, x: torch.Tensor, img: torch.Tensor, ws: torch.Tensor, rgb_gain: torch.Tensor | float):
        x = self.conv1(self.conv0(upsample_features(x), ws[:, 0]), ws[:, 1])
        img = upsample_image(img) + rgb_gain * self.torgb(x, ws[:, 2]).float()
        return x, img


class Upsampler(nn.Module):
    """Blocks for `resolutions`; channels at r are min(channel_base // r, channel_max)."""

    def __init__(self, in_channels: int, resolutions: list[int], channel_base: int, channel_max: int,
                 w_dim: int, kernel: int):
        super().__init__()
        channels = [in_channels] + [min(channel_base // r, channel_max) for r in resolutions]
        self.blocks = nn.ModuleList([UpBlock(channels[i], channels[i + 1], w_dim, kernel)
                                     for i in range(len(resolutions))])
        self.num_ws = UpBlock.num_ws * len(resolutions)
        self.activation_checkpointing = False

    def forward(self, x: torch.Tensor, img: torch.Tensor, ws: torch.Tensor, stage: int,
                fade: torch.Tensor | float) -> torch.Tensor:
        """Run the first `stage` blocks; the last of them adds its RGB scaled by `fade`."""
        for i in range(stage):
            block, block_ws = self.blocks[i], ws[:, UpBlock.num_ws * i: UpBlock.num_ws * (i + 1)]
            gain = fade if i == stage - 1 else 1.0
            if self.activation_checkpointing and torch.is_grad_enabled():
                x, img = checkpoint(block, x, img, block_ws, gain, use_reentrant=False)
            else:
                x, img = block(x, img, block_ws, gain)
        return img

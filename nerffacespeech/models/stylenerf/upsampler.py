"""The 2D upsampler: from the rendered feature map to the output image, one block per octave.

Each block doubles the resolution with a pixel shuffle plus nearest-neighbour copies and a
light blur, then runs modulated convolutions (1x1 by default, as the original, which keeps
the upsampler close to 3D-consistent) and adds an RGB residual to the bilinearly upsampled
image (StyleGAN2 "skip" output). Progressive growing scales the newest block's residual by a
fade factor and skips the blocks above the current resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import LRELU_GAIN, ModulatedConv2d, blur


def upsample_image(img: torch.Tensor) -> torch.Tensor:
    return F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False)


class UpBlock(nn.Module):
    """One octave: features and image at r/2 -> at r.

    The first (1x1) convolution runs at r/2 and makes out + 4*out channels: `out` of them are
    copied to 2x2 pixels (nearest), the other 4*out are pixel-shuffled; their sum is blurred.
    That equals a 1x1 convolution over [nearest(x), pixel_shuffle(x)] at r, at a fifth of the
    memory at the higher resolution.
    """

    num_ws = 3

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel: int):
        super().__init__()
        self.out_channels = out_channels
        self.conv0 = ModulatedConv2d(in_channels, 5 * out_channels, w_dim, kernel=1, activation=False)
        self.bias0 = nn.Parameter(torch.zeros(out_channels))
        self.conv1 = ModulatedConv2d(out_channels, out_channels, w_dim, kernel=kernel)
        self.torgb = ModulatedConv2d(out_channels, 3, w_dim, kernel=1, demodulate=False, activation=False)

    def forward(self, x: torch.Tensor, img: torch.Tensor, ws: torch.Tensor, rgb_gain: torch.Tensor | float):
        y = self.conv0(x, ws[:, 0])
        c = self.out_channels
        x = F.interpolate(y[:, :c], scale_factor=2.0, mode="nearest") + F.pixel_shuffle(y[:, c:], 2)
        bias = (self.bias0 * LRELU_GAIN).to(x.dtype)[None, :, None, None]
        x = F.leaky_relu(blur(x, LRELU_GAIN) + bias, 0.2)
        x = self.conv1(x, ws[:, 1])
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

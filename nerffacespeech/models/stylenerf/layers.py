"""Building blocks shared by the networks: equalized-learning-rate layers and StyleGAN2 modulation.

Every layer casts its weights to the input's dtype and computes in it; parameters may be fp32
(DDP + autocast) or bf16/fp16 (DeepSpeed). Modulation is the "non-fused" form: scale the input
channels by the style, one shared GEMM/convolution, scale the outputs by the demodulation
coefficients. That is one large matrix product per layer for the whole batch, with no
per-sample weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)
FP16_CLAMP = 256.0          # StyleGAN2's conv_clamp: keeps fp16 activations finite


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (0.2) with the gain that keeps unit variance."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-FP16_CLAMP, FP16_CLAMP) if x.dtype == torch.float16 else x


class EqualLinear(nn.Module):
    """A linear layer whose weights are scaled at run time (equalized learning rate)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight * self.weight_gain).to(x.dtype)
        bias = (self.bias * self.lr_mul).to(x.dtype)
        x = F.linear(x, weight, bias)
        return lrelu(x) if self.activation else x


class ModulatedLinear(nn.Module):
    """A style-modulated layer on point features (B, N, C): the NeRF MLPs' layer."""

    def __init__(self, in_features: int, out_features: int, w_dim: int, demodulate: bool = True,
                 activation: bool = True):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_features, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = 1.0 / math.sqrt(in_features)
        self.demodulate = demodulate
        self.activation = activation

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w.to(x.dtype))                                   # (B, in)
        weight = (self.weight * self.weight_gain).to(x.dtype)                 # (out, in)
        if not self.demodulate:
            styles = styles * self.weight_gain
            weight = self.weight.to(x.dtype)
        x = torch.matmul(x * styles.unsqueeze(1), weight.t())                 # (B, N, out)
        if self.demodulate:
            demod = torch.rsqrt(torch.matmul(styles.square(), weight.square().t()) + 1e-8)   # (B, out)
            x = x * demod.unsqueeze(1)
        x = x + self.bias.to(x.dtype)
        return clamp_fp16(lrelu(x) if self.activation else x)


class ModulatedConv2d(nn.Module):
    """A style-modulated convolution on feature maps (B, C, H, W): the upsampler's layer."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel: int = 1,
                 demodulate: bool = True, activation: bool = True):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2
        self.demodulate = demodulate
        self.activation = activation

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w.to(x.dtype))                                   # (B, in)
        if self.demodulate:
            weight = (self.weight * self.weight_gain).to(x.dtype)
        else:
            styles = styles * self.weight_gain
            weight = self.weight.to(x.dtype)
        x = F.conv2d(x * styles[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:
            demod = torch.rsqrt(torch.matmul(styles.square(), weight.square().sum([2, 3]).t()) + 1e-8)
            x = x * demod[:, :, None, None]
        x = x + self.bias.to(x.dtype)[None, :, None, None]
        return clamp_fp16(lrelu(x) if self.activation else x)


class EqualConv2d(nn.Module):
    """A plain convolution with equalized learning rate (discriminator)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 activation: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight * self.weight_gain).to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        x = F.conv2d(x, weight, bias, padding=self.padding)
        return clamp_fp16(lrelu(x) if self.activation else x)


def blur(x: torch.Tensor) -> torch.Tensor:
    """A separable [1, 2, 1] low-pass, depthwise, same size: removes pixel-shuffle checkerboards."""
    channels = x.shape[1]
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (taps[:, None] * taps[None, :] / 16.0).expand(channels, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


def downsample2(x: torch.Tensor) -> torch.Tensor:
    """Halve the resolution by 2x2 averaging (box filter)."""
    return F.avg_pool2d(x, 2)


def resize_images(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Images at `resolution` (area-averaged down, bilinear up); unchanged when already there."""
    if x.shape[-1] == resolution:
        return x
    if x.shape[-1] > resolution:
        return F.adaptive_avg_pool2d(x, resolution)
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)

"""Building blocks shared by the networks: equalized-learning-rate layers and StyleGAN2 modulation.

Every layer casts its weights to the input's dtype and computes in it; parameters may be fp32
(DDP + autocast) or bf16/fp16 (DeepSpeed). Modulation is "fused": the style scales a per-sample
copy of the (small) weight, so a layer is one batched matrix product with the bias folded in
(`baddbmm`) plus the activation, and autograd keeps only the layer's input. 1x1 convolutions
are the same product on the channels-last view of the feature map. The leaky ReLU's gain is
folded into weight and bias (it is positively homogeneous); constant gains ride on the matrix
products' alpha/beta factors rather than extra elementwise kernels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)
FP16_CLAMP = 256.0          # StyleGAN2's conv_clamp: keeps fp16 activations finite


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
        gain = LRELU_GAIN if self.activation else 1.0
        shape = x.shape
        x = torch.addmm(self.bias.to(x.dtype), x.reshape(-1, shape[-1]), self.weight.to(x.dtype).t(),
                        beta=self.lr_mul * gain, alpha=self.weight_gain * gain).reshape(*shape[:-1], -1)
        return F.leaky_relu(x, 0.2) if self.activation else x


def modulated_weight(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """Per-sample weights (B, out, in, ...) = weight * style over inputs, demodulated per output
    (the layer's constant gain is left to the caller's matrix product)."""
    extra = (1,) * (weight.dim() - 2)
    w = weight[None] * styles.reshape(styles.shape[0], 1, -1, *extra)
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=tuple(range(2, w.dim())), keepdim=True) + 1e-8)
    return w


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
        styles = self.affine(w.to(x.dtype))                                       # (B, in)
        gain = LRELU_GAIN if self.activation else 1.0
        scale = gain if self.demodulate else gain * self.weight_gain
        weight = modulated_weight(self.weight.to(x.dtype), styles, self.demodulate)   # (B, out, in)
        x = torch.baddbmm(self.bias.to(x.dtype).reshape(1, 1, -1), x, weight.transpose(1, 2), beta=gain, alpha=scale)
        return clamp_fp16(F.leaky_relu(x, 0.2) if self.activation else x)


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
        b, c, h, wd = x.shape
        styles = self.affine(w.to(x.dtype))                                       # (B, in)
        gain = LRELU_GAIN if self.activation else 1.0
        scale = gain if self.demodulate else gain * self.weight_gain
        weight = modulated_weight(self.weight.to(x.dtype), styles, self.demodulate)   # (B, out, in, k, k)
        out = weight.shape[1]
        if self.padding == 0:       # 1x1: a batched GEMM on the channels-last view (no copy when channels-last)
            y = torch.baddbmm(self.bias.to(x.dtype).reshape(1, 1, -1), x.permute(0, 2, 3, 1).reshape(b, h * wd, c),
                              weight.reshape(b, out, c).transpose(1, 2), beta=gain, alpha=scale)
            y = y.reshape(b, h, wd, out).permute(0, 3, 1, 2)
        else:
            bias = (self.bias * gain).to(x.dtype)
            y = F.conv2d(x.reshape(1, b * c, h, wd), weight.reshape(b * out, c, *weight.shape[3:]) * scale,
                         bias.repeat(b), padding=self.padding, groups=b).reshape(b, out, h, wd)
        return clamp_fp16(F.leaky_relu(y, 0.2) if self.activation else y)


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
        gain = LRELU_GAIN if self.activation else 1.0
        weight = (self.weight * (self.weight_gain * gain)).to(x.dtype)
        bias = (self.bias * gain).to(x.dtype) if self.bias is not None else None
        x = F.conv2d(x, weight, bias, padding=self.padding)
        return clamp_fp16(F.leaky_relu(x, 0.2) if self.activation else x)


def _blur_conv(x: torch.Tensor, gain: float) -> torch.Tensor:
    channels = x.shape[1]
    taps = 2 - (torch.arange(3, dtype=x.dtype, device=x.device) - 1).abs()     # [1, 2, 1], no host copy
    kernel = (taps[:, None] * taps[None, :] * (gain / 16.0)).expand(channels, 1, 3, 3)
    return F.conv2d(x, kernel, padding=1, groups=channels)


class _Blur(torch.autograd.Function):
    """The blur with itself as its backward (the kernel is symmetric, so the filter is self-adjoint).

    Autograd's own double backward of a depthwise convolution runs one convolution per channel
    (hundreds per upsampler block in the path-length pass); this one is a single convolution at
    every order of differentiation.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, gain: float) -> torch.Tensor:
        ctx.gain = gain
        return _blur_conv(x, gain)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Blur.apply(grad, ctx.gain), None


def blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """A [1, 2, 1] x [1, 2, 1] low-pass (times `gain`), depthwise, zero-padded to the same size:
    removes pixel-shuffle checkerboards."""
    return _Blur.apply(x, gain)


def downsample2(x: torch.Tensor) -> torch.Tensor:
    """Halve the resolution by 2x2 averaging (box filter): a mean over views, which keeps the
    memory format (avg_pool2d's CUDA backward was a tenth of a channels-last step's GPU time)."""
    b, c, h, w = x.shape
    if x.is_contiguous():
        return x.unflatten(3, (w // 2, 2)).unflatten(2, (h // 2, 2)).mean((3, 5))
    nhwc = x.permute(0, 2, 3, 1).unflatten(2, (w // 2, 2)).unflatten(1, (h // 2, 2))
    return nhwc.mean((2, 4)).permute(0, 3, 1, 2)


def resize_images(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Images at `resolution` (area-averaged down, bilinear up); unchanged when already there."""
    if x.shape[-1] == resolution:
        return x
    if x.shape[-1] > resolution:
        return F.adaptive_avg_pool2d(x, resolution)
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)

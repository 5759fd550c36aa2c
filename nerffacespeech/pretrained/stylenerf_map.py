"""The name map from the official StyleNeRF networks (facebookresearch/StyleNeRF, `conf/model/
stylenerf_ffhq.yaml`: `training.networks.Generator` with `training.stylenerf.NeRFSynthesisNetwork`,
`training.stylenerf.Discriminator`) onto ours, for one model shape (`ModelShape`: what
`nerffacespeech.configs.stylenerf.ModelConfig` provides; not imported, since configs import
`pretrained` to check the weights a stage needs).

Each table row is (official name pattern, our name template or None to drop, layout transform,
why). Where the architectures differ (docs/PRETRAINED.md says how), the official tensors are
dropped on purpose and ours stay as initialised: `*_ALLOW_MISSING` lists them for `export`.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from .name_map import Rule


class ModelShape(Protocol):
    """The architecture numbers the name map depends on."""

    resolution: int
    nerf_resolution: int
    fg_blocks: int
    bg_blocks: int
    frequencies: int
    upsampler_resolutions: Sequence[int]


# Our tensors that no official tensor fills (the structure differs; they keep their init).
GENERATOR_ALLOW_MISSING = (r"upsampler\.blocks\.\d+\.conv0\..+", r"upsampler\.blocks\.\d+\.bias0")
DISCRIMINATOR_ALLOW_MISSING = (r"blocks\.\d+\.skip\.weight",)


def squeeze_1x1(t: torch.Tensor) -> torch.Tensor:
    """An official (out, in, 1, 1) 1x1-convolution weight as our (out, in) linear weight."""
    if t.dim() != 4 or t.shape[2:] != (1, 1):
        raise ValueError(f"expected an (out, in, 1, 1) weight, got {tuple(t.shape)}")
    return t[:, :, 0, 0]


def posenc_order(dims: int, octaves: int, axis: int):
    """Reorder positional-encoding channels along `axis` from the official order (per octave k:
    sin(2^k π p) then cos, each over the `dims` coordinates; dnnlib/geometry.py) to ours
    (all sines then all cosines, octave-major; models/stylenerf/nerf.py)."""
    k, s, d = torch.meshgrid(torch.arange(octaves), torch.arange(2), torch.arange(dims), indexing="ij")
    official = (k * 2 * dims + s * dims + d).flatten()
    ours = (s * octaves * dims + k * dims + d).flatten()
    index = torch.empty_like(official)
    index[ours] = official                      # our channel j comes from official channel index[j]

    def transform(t: torch.Tensor) -> torch.Tensor:
        if t.shape[axis] != len(index):
            raise ValueError(f"expected {len(index)} encoding channels on axis {axis}, got {tuple(t.shape)}")
        return t.index_select(axis, index)
    return transform


def _then(*fns):
    def transform(t):
        for fn in fns:
            t = fn(t)
        return t
    return transform


def generator_rules(cfg: ModelShape) -> tuple[Rule, ...]:
    """Official `G`/`G_ema` state-dict names -> our `Generator`'s."""
    rows = [
        (r"mapping\.fc(\d+)\.(weight|bias)", r"mapping.layers.\1.\2", None,
         "FullyConnectedLayer, lr multiplier 0.01: same storage as our EqualLinear"),
        (r"mapping\.w_avg", "w_avg", None, "truncation centre; ours lives on the generator"),
        (r"mapping\.embed\..+", None, None, "class conditioning (c_dim 0 for FFHQ)"),
        (r"synthesis\.alpha", None, None, "progressive-growing state: ours is in the training state"),
    ]
    for nerf, ours, dims, blocks in (("fg_nerf", "foreground", 3, cfg.fg_blocks),
                                     ("bg_nerf", "background", 4, cfg.bg_blocks)):
        p = rf"synthesis\.{nerf}"
        rows += [
            (rf"{p}\.fc_in\.weight", f"{ours}.layers.0.weight",
             _then(squeeze_1x1, posenc_order(dims, cfg.frequencies, 1)), "Style2Layer 1x1 conv; encoding order"),
            (rf"{p}\.fc_in\.affine\.(weight|bias)", rf"{ours}.layers.0.affine.\1",
             posenc_order(dims, cfg.frequencies, 0), "styles per encoding channel"),
            (rf"{p}\.fc_in\.bias", f"{ours}.layers.0.bias", None, ""),
        ]
        for i in range(blocks - 1):
            rows += [(rf"{p}\.blocks\.{i}\.weight", f"{ours}.layers.{i + 1}.weight", squeeze_1x1, "Style2Layer"),
                     (rf"{p}\.blocks\.{i}\.(bias|affine\.weight|affine\.bias)", rf"{ours}.layers.{i + 1}.\1", None, "")]
        for official, mine in (("sigma_out", "density"), ("feat_out", "features")):
            rows += [(rf"{p}\.{official}\.weight", f"{ours}.{mine}.weight", squeeze_1x1, "ToRGBLayer, no demodulation"),
                     (rf"{p}\.{official}\.(bias|affine\.weight|affine\.bias)", rf"{ours}.{mine}.\1", None, "")]
        rows.append((rf"{p}\.(fc_in|blocks\.\d+|to_rgb)\.resample_filter", None, None, "unused by 1x1 layers"))
    rows += [
        (r"synthesis\.fg_nerf\.to_rgb\.weight", "nerf_rgb.weight", squeeze_1x1, "linear RGB head of the features"),
        (r"synthesis\.fg_nerf\.to_rgb\.bias", "nerf_rgb.bias", None, ""),
        (r"synthesis\.bg_nerf\.to_rgb\.(weight|bias)", None, None,
         "ours applies one RGB head after compositing; the foreground's is kept"),
    ]
    for i, res in enumerate(cfg.upsampler_resolutions):
        b = rf"synthesis\.b{res}"
        rows += [
            (rf"{b}\.conv1\.(weight|bias|affine\.weight|affine\.bias)", rf"upsampler.blocks.{i}.conv1.\1", None,
             "SynthesisLayer, 1x1 kernel"),
            (rf"{b}\.torgb\.(weight|bias|affine\.weight|affine\.bias)", rf"upsampler.blocks.{i}.torgb.\1", None,
             "ToRGBLayer"),
            (rf"{b}\.conv0\..+", None, None, "nn_cat upsampling layer + adapter MLP: our conv0 differs"),
            (rf"{b}\.conv1\.(w_avg|resample_filter)", None, None, "magnitude EMA gain / unused filter"),
            (rf"{b}\.resample_filter", None, None, "[1,3,3,1] image upsampling filter: ours is bilinear"),
        ]
    return tuple(Rule(pattern, target, why, transform) for pattern, target, transform, why in rows)


def discriminator_rules(cfg: ModelShape) -> tuple[Rule, ...]:
    """Official `D` state-dict names -> our `Discriminator`'s."""
    rows = [(r"alpha", None, "progressive-growing state")]
    res = cfg.resolution
    while res >= 8:
        b = rf"b{res}"
        entry = res >= min(cfg.nerf_resolution, cfg.resolution)
        rows += [
            (rf"{b}\.(conv0|conv1)\.(weight|bias)", rf"blocks.{res}.\1.\2", "3x3 convolutions"),
            (rf"{b}\.fromrgb\.(weight|bias)", rf"from_rgb.{res}.\1" if entry else None,
             "image entry" if entry else "below our lowest entry resolution"),
            (rf"{b}\.((conv0|conv1|fromrgb)\.)?resample_filter", None, "ours downsamples by 2x2 averaging"),
        ]
        res //= 2
    rows += [(r"b4\.(conv|fc|out)\.(weight|bias)", r"\1.\2", "epilogue (minibatch-std, conv, fc, out)"),
             (r"b4\.fromrgb\.(weight|bias)", None, "skip architecture's 4x4 image input: ours has none"),
             (r"b4\.((conv|fromrgb)\.)?resample_filter", None, "unused")]
    return tuple(Rule(pattern, target, why) for pattern, target, why in rows)

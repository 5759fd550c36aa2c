"""Adaptive discriminator augmentation (StyleGAN2-ADA, Karras et al. 2020) on kornia's ops.

`AugmentPipe` applies the paper's pixel blitting, geometric and colour transforms, each with
probability p, to every image D sees (reals and fakes alike, differentiable, batched, on any
device). `AdaptiveP` drives p from the overfitting heuristic r_t = E[sign(D(real))] toward a
target. Random draws come from the global torch generators (part of every checkpoint's `rng`),
and p with its pending sums is part of the progress dict, so a resumed run continues bitwise.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nerffacespeech.configs.stylenerf import AUGMENT_MODES
from nerffacespeech.models.stylenerf.draws import Rows


def _luma_flip_class():
    """LumaFlip as a kornia intensity augmentation: kornia has no such op (ADA's "lumaflip",
    the reflection of each colour through the plane orthogonal to the luma axis about grey)."""
    from kornia.augmentation import IntensityAugmentationBase2D

    class RandomLumaFlip(IntensityAugmentationBase2D):
        """x -> x - 2 <x - 0.5, v> v with v = (1, 1, 1) / sqrt(3), on images in [0, 1]."""

        def __init__(self, p: float = 0.5) -> None:
            super().__init__(p=p, same_on_batch=False, p_batch=1.0, keepdim=False)

        def apply_transform(self, input: torch.Tensor, params: dict, flags: dict,
                            transform: torch.Tensor | None = None) -> torch.Tensor:
            luma = (input - 0.5).mean(dim=1, keepdim=True)            # <x - 0.5, v> v = mean on every channel
            return input - 2 * luma

    return RandomLumaFlip


def build_transforms() -> list[tuple[str, nn.Module]]:
    """The pipeline in the paper's order ("bgc"): blit, geometric, colour. Each transform gets
    its own probability (set by `AugmentPipe.set_p`); geometric ones pad by reflection."""
    import kornia.augmentation as K

    reflect = {"padding_mode": "reflection", "p": 0.0}
    return [
        ("xflip", K.RandomHorizontalFlip(p=0.0)),
        ("rotate90", K.RandomRotation90(times=(0, 3), resample="nearest", p=0.0)),
        ("xint", K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), resample="nearest", **reflect)),
        ("scale", K.RandomAffine(degrees=0.0, scale=(2 ** -0.4, 2 ** 0.4), **reflect)),
        ("rotate", K.RandomAffine(degrees=180.0, **reflect)),
        ("aniso", K.RandomAffine(degrees=0.0, scale=(2 ** -0.3, 2 ** 0.3, 2 ** -0.3, 2 ** 0.3), **reflect)),
        ("xfrac", K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), **reflect)),
        ("brightness", K.RandomBrightness(brightness=(0.8, 1.2), clip_output=False, p=0.0)),
        ("contrast", K.RandomContrast(contrast=(0.5, 2.0), clip_output=False, p=0.0)),
        ("lumaflip", _luma_flip_class()(p=0.0)),
        ("hue", K.RandomHue(hue=(-0.5, 0.5), p=0.0)),
        ("saturation", K.RandomSaturation(saturation=(0.5, 2.0), p=0.0)),
    ]


class AugmentPipe(nn.Module):
    """Images in [-1, 1] -> the same images, each transform applied per image with probability p.

    Works in fp32 on [0, 1] (kornia's colour range) and returns the input's dtype; p == 0 is the
    identity at no cost and draws nothing. `only` keeps a subset of the transforms (tests).
    """

    def __init__(self, only: tuple[str, ...] | None = None):
        super().__init__()
        chosen = [(name, t) for name, t in build_transforms() if only is None or name in only]
        self.names = [name for name, _ in chosen]
        self.transforms = nn.ModuleList(t for _, t in chosen)
        self.p = 0.0

    def set_p(self, p: float) -> None:
        self.p = float(p)
        for transform in self.transforms:
            transform.p = self.p

    def forward(self, images: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        """With `rows` (the images' place in the step's global batch, `draws`), each transform's
        parameters are drawn for the whole global batch and cut to these images."""
        if self.p <= 0.0:
            return images
        out = images.float() * 0.5 + 0.5
        for transform in self.transforms:
            params = None
            if rows is not None:
                drawn = transform.forward_parameters(torch.Size(rows.full_shape(tuple(out.shape))))
                params = {key: rows.cut(value, out.shape[0]) for key, value in drawn.items()
                          if key != "forward_input_shape"}
                params["forward_input_shape"] = torch.tensor(out.shape, dtype=torch.long)
            out = transform(out, params=params)
        return (out * 2 - 1).to(images.dtype)


class AdaptiveP:
    """p and the overfitting heuristic behind it.

    Every step adds sign(D(real)) of the step's reals (on the device, no synchronisation);
    every `interval` steps the sums are averaged over ranks into r_t and p moves by
    sign(r_t - target) x (images since the last update) / (ada_kimg x 1000), clamped to [0, 1]:
    from 0 to 1 in `ada_kimg` thousand images at most (the paper's speed, 500 kimg). Mode
    `fixed` keeps p; `none` keeps it 0.
    """

    def __init__(self, mode: str, p: float, target: float, kimg: float, interval: int, device: torch.device):
        if mode not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {AUGMENT_MODES}, got {mode!r}")
        self.mode, self.target, self.kimg, self.interval = mode, target, kimg, interval
        self.p = p if mode != "none" else 0.0
        self.rt = 0.0                               # r_t of the last update (for logs)
        self.device = device
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)    # (sum of signs, count)

    @property
    def adapts(self) -> bool:
        return self.mode == "ada"

    def accumulate(self, real_logits: torch.Tensor) -> None:
        if self.adapts:                           # no host round trip: a new device tensor would wait for the GPU
            signs = real_logits.detach().float().sign()
            self.sums[0] += signs.sum().double()
            self.sums[1] += signs.numel()

    def maybe_update(self, step: int, images_per_update: int, all_reduce=None) -> None:
        """After step `step` (1-based): every `interval` steps, r_t from the sums and the new p.
        `all_reduce` sums a tensor over ranks in place (None: one process)."""
        if not self.adapts or step % self.interval:
            return
        sums = self.sums.clone()
        if all_reduce is not None:
            all_reduce(sums)
        total, count = sums.tolist()
        self.sums.zero_()
        if count == 0:
            return
        self.rt = total / count
        direction = (self.rt > self.target) - (self.rt < self.target)
        self.p = min(max(self.p + direction * images_per_update / (self.kimg * 1000), 0.0), 1.0)

    def state(self) -> dict[str, Any]:
        """JSON-able (floats round-trip exactly through JSON)."""
        total, count = self.sums.tolist()
        return {"p": self.p, "rt": self.rt, "sign_sum": total, "sign_count": count}

    def load(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        self.p, self.rt = float(state["p"]), float(state["rt"])
        self.sums = torch.tensor([state["sign_sum"], state["sign_count"]], dtype=torch.float64, device=self.device)


__all__ = ["AUGMENT_MODES", "AugmentPipe", "AdaptiveP", "build_transforms"]

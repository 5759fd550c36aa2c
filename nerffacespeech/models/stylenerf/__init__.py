"""Our StyleNeRF: generator (mapping, NeRF + NeRF++ fields, volume renderer, upsampler) and the
progressive discriminator. Sizes come from `nerffacespeech.configs.stylenerf` presets."""
from __future__ import annotations

from torch import nn

from nerffacespeech.configs.stylenerf import PRESETS, ModelConfig

from .discriminator import Discriminator
from .generator import Generator, GeneratorOutput


def build(cfg: ModelConfig) -> tuple[Generator, Discriminator]:
    """A fresh generator and discriminator for `cfg` (initialised from torch's global generator)."""
    return Generator(cfg), Discriminator(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def preset_sizes(name: str) -> dict[str, int]:
    """Parameter counts of a preset's G and D, and of a pickle-style G + D + G_ema bundle."""
    import torch

    with torch.device("meta"):
        g, d = build(PRESETS[name].model)
    n_g, n_d = count_parameters(g), count_parameters(d)
    return {"G": n_g, "D": n_d, "G+D+G_ema": 2 * n_g + n_d}


__all__ = ["Generator", "GeneratorOutput", "Discriminator", "build", "count_parameters", "preset_sizes"]

"""The StyleGAN2/StyleNeRF objectives as plain functions: non-saturating logistic loss, R1,
path-length regularisation, and the style-mixing draw.

The regularisers take a network *function* (from `Trainable.regulariser_grads`) rather than
a module, so their double backward never runs inside a data-parallel engine.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from nerffacespeech.models.stylenerf import GeneratorOutput


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating: -log sigmoid(D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - sigmoid(D(fake))) - log sigmoid(D(real))."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(discriminator: Callable[..., torch.Tensor], real: torch.Tensor, **kwargs) -> torch.Tensor:
    """Mean over the batch of |d D(x) / d x|^2 at real images (x in the regulariser's dtype)."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real, **kwargs)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.float().square().sum([1, 2, 3]).mean()


def path_lengths(generate: Callable[[], "GeneratorOutput"]) -> torch.Tensor:
    """|J_w^T y| per sample for random image-space directions y (StyleGAN2's path length), (B,).

    `generate()` returns an output whose `ws` (the styles it used, still attached to the
    mapping network) and `img` are differentiated, so the penalty reaches the mapping too.
    """
    out = generate()
    noise = torch.randn_like(out.img) / math.sqrt(out.img.shape[2] * out.img.shape[3])
    (grad,) = torch.autograd.grad((out.img * noise).sum(), out.ws, create_graph=True)
    return grad.float().square().sum(2).mean(1).sqrt()


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Penalty mean((|J^T y| - a)^2) and the updated running mean a (moved by `decay`; kept where
    the batch's lengths are not finite, so one bad step cannot poison every later penalty)."""
    moved = pl_mean.lerp(lengths.detach().mean(), decay)
    new_mean = torch.where(moved.isfinite(), moved, pl_mean)
    return (lengths - new_mean).square().mean(), new_mean


def style_mixing_cutoff(num_ws: int, probability: float) -> int | None:
    """With `probability`, a random index in [1, num_ws) from which the second latent's styles apply.

    Drawn from the CPU generator so that it never waits for the GPU.
    """
    draw, cutoff = torch.rand(()), torch.randint(1, num_ws, ())
    return int(cutoff) if float(draw) < probability else None

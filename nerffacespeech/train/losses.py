"""The StyleGAN2/StyleNeRF objectives as plain functions: non-saturating logistic loss, R1,
path-length regularisation, and the style-mixing draws.

The regularisers take a network *function* (from `Trainable.regulariser_grads`) rather than
a module, so their double backward never runs inside a data-parallel engine.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from nerffacespeech.models.stylenerf import draws
from nerffacespeech.models.stylenerf.draws import Rows

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


def path_lengths(generate: Callable[[], "GeneratorOutput"], rows: Rows | None = None) -> torch.Tensor:
    """|J_w^T y| per sample for random image-space directions y (StyleGAN2's path length), (B,).

    `generate()` returns an output whose `ws` (the styles it used, still attached to the
    mapping network) and `img` are differentiated, so the penalty reaches the mapping too.
    `rows` places the batch in the step's global batch, for the draw of y (`draws`).
    """
    out = generate()
    noise = draws.randn(out.img.shape, out.img.device, rows).to(out.img.dtype)
    noise = noise / math.sqrt(out.img.shape[2] * out.img.shape[3])
    (grad,) = torch.autograd.grad((out.img * noise).sum(), out.ws, create_graph=True)
    return grad.float().square().sum(2).mean(1).sqrt()


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor) -> torch.Tensor:
    """mean((|J^T y| - a)^2) against the running mean a of the earlier steps, so that each
    sample's term is the same whichever rank and micro-batch computes it."""
    return (lengths - pl_mean).square().mean()


def updated_path_length_mean(pl_mean: torch.Tensor, step_mean: torch.Tensor, decay: float) -> torch.Tensor:
    """The running mean moved by `decay` toward the step's mean path length; kept where that is
    not finite, so one bad step cannot poison every later penalty."""
    moved = pl_mean.lerp(step_mean, decay)
    return torch.where(moved.isfinite(), moved, pl_mean)


def style_mixing_cutoffs(num_ws: int, probability: float, count: int, device: torch.device,
                         rows: Rows | None = None) -> torch.Tensor:
    """(count,) per sample: with `probability`, a random index in [1, num_ws) from which the
    second latent's styles apply, else num_ws (no mixing). Drawn on the device: no host sync."""
    mixes = draws.rand((count,), device, rows) < probability
    cutoffs = draws.randint(num_ws - 1, (count,), device, rows) + 1
    return torch.where(mixes, cutoffs, torch.full_like(cutoffs, num_ws))

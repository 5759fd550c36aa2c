"""Weights that are NaN or infinite: a training that diverged. Checkpointing them would make the
diverged state the one every resume starts from, so a save refuses them (`checkpoint`)."""
from __future__ import annotations

from typing import Iterable

import torch


class NonFiniteWeights(ValueError):
    """This rank's weights hold NaN or infinite values; the message names the first tensor."""


def non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity, in their order.

    Each tensor's minimum and maximum (NaN and inf survive them; no temporary the size of the
    tensor, no overflow as a sum could), read back once per device.
    """
    names, extremes = [], {}
    for name, tensor in named:
        if tensor.is_floating_point() and tensor.numel():
            low, high = torch.aminmax(tensor.detach().reshape(-1))
            names.append(name)
            extremes.setdefault(tensor.device, []).append((len(names) - 1, torch.stack([low, high]).float()))
    bad = []
    for pairs in extremes.values():
        finite = torch.isfinite(torch.stack([pair for _, pair in pairs])).all(dim=1).cpu()
        bad += [index for (index, _), ok in zip(pairs, finite.tolist()) if not ok]
    return [names[index] for index in sorted(bad)]


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None."""
    bad = non_finite(named)
    return bad[0] if bad else None


def refuse_non_finite(label: str, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Raise NonFiniteWeights naming `label`.<tensor> when one is not finite."""
    bad = first_non_finite(named)
    if bad is not None:
        raise NonFiniteWeights(f"{label}.{bad} holds NaN or infinite values")

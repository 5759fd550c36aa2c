"""Image-quality metrics for the generators: SWD (no pretrained network) and FID (local Inception).

`collect` spreads the images of a metric over the ranks and gathers their per-image summaries
(SWD patch descriptors, Inception features) on every rank.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist


def collect(make_batch: Callable[[list[int]], torch.Tensor], summarise: Callable[[torch.Tensor], list[torch.Tensor]],
            count: int, batch: int, rank: int, world_size: int) -> list[torch.Tensor]:
    """Summaries of `count` images, this rank making images [rank::world] in batches, gathered.

    `make_batch(indices)` returns those images (the same images for an index on any rank);
    `summarise(images)` returns a list of (n, …) tensors, concatenated per list entry.
    """
    mine: list[list[torch.Tensor]] = []
    indices = list(range(rank, count, world_size))
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        mine.append([s.float().cpu() for s in summarise(make_batch(chunk))])
    parts = [torch.cat(column) for column in zip(*mine)] if mine else []
    if world_size == 1 or not dist.is_initialized():
        return parts
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, parts)
    return [torch.cat([g[i] for g in gathered if g]) for i in range(len(parts))]

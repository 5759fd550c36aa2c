"""Evaluate a generator against a dataset with the configured metrics, across all ranks.

Real-image statistics are computed once and kept; generated images come from per-index seeds,
so a metric does not depend on the number of ranks, and it runs under its own random
generators (the caller forks the global ones) so evaluating never shifts the training stream.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import collect, swd

# fid50k_full: 50k generated images against the whole dataset; fid10k/fid2k: fewer, for quick checks
FID_IMAGES = {"fid50k_full": 50_000, "fid10k": 10_000, "fid2k": 2_000}

Generate = Callable[[torch.Tensor], torch.Tensor]     # latents (n, z_dim) -> images (n, 3, R, R) in [-1, 1]


def latents_for(indices: list[int], z_dim: int, device: torch.device, salt: int = 0) -> torch.Tensor:
    """One latent per index from its own seed: the same image for an index on any rank."""
    return torch.stack([torch.from_numpy(np.random.default_rng([salt, i]).standard_normal(z_dim).astype(np.float32))
                        for i in indices]).to(device)


class MetricSuite:
    """The metrics of a run (`swd`, `fid*`) with cached real statistics."""

    def __init__(self, names: tuple[str, ...], dataset, count: int, batch: int, rank: int, world_size: int,
                 device: torch.device, inception_weights: str | None = None):
        self.names, self.dataset, self.count, self.batch = names, dataset, count, batch
        self.rank, self.world, self.device = rank, world_size, device
        self.inception_weights = inception_weights
        self._real: dict[str, object] = {}
        self._inception = None

    def _real_images(self, indices: list[int]) -> torch.Tensor:
        images = torch.stack([self.dataset[(i % len(self.dataset), False)] for i in indices])
        return images.to(self.device).float() / 127.5 - 1

    def _swd_descriptors(self, images: torch.Tensor, salt: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(salt)
        return swd.patch_descriptors(images, generator)

    def _inception_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        from .fid import load_inception

        if self._inception is None:
            self._inception = load_inception(self.inception_weights, self.device)
        return [self._inception.features(images)]

    def evaluate(self, generate: Generate, z_dim: int) -> dict[str, float]:
        """Every configured metric for `generate`, the same numbers on every rank."""

        def fakes(indices: list[int]) -> torch.Tensor:
            return generate(latents_for(indices, z_dim, self.device)).float().clamp(-1, 1)

        results: dict[str, float] = {}
        for name in self.names:
            if name == "swd":
                count = min(self.count, len(self.dataset))
                if name not in self._real:
                    self._real[name] = collect(self._real_images, lambda x: self._swd_descriptors(x, 1),
                                               count, self.batch, self.rank, self.world)
                fake = collect(fakes, lambda x: self._swd_descriptors(x, 2), count, self.batch, self.rank, self.world)
                levels = swd.swd(self._real[name], fake)
                results["swd"] = float(np.mean(levels))
                results.update({f"swd_level{i}": v for i, v in enumerate(levels)})
            else:
                from .fid import frechet_distance

                fake_count = FID_IMAGES[name]
                real_count = len(self.dataset) if name == "fid50k_full" else min(fake_count, len(self.dataset))
                if name not in self._real:
                    self._real[name] = collect(self._real_images, self._inception_features, real_count, self.batch,
                                               self.rank, self.world)[0]
                fake = collect(fakes, self._inception_features, fake_count, self.batch, self.rank, self.world)[0]
                results[name] = frechet_distance(self._real[name], fake)
        return results

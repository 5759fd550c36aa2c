"""Random numbers that belong to a sample, not to the process that happens to compute it.

A training step's samples are the rows [0, total) of its global batch, and each rank's
micro-batch is a contiguous block of them (the data sampler's order). With `rows`, a draw is
made for every row of the global batch and cut to the block; `keyed` seeds the generators per
(seed, step, pass) and each micro-batch's pass re-enters it. So a sample's latents, camera, ray
jitter and augmentation do not depend on how many ranks and micro-batches share the step, and a
run resumed on another number of GPUs continues the run a job of that size would have made.
The cost is drawing `total` rows where a block needs its own: small next to the networks.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Rows:
    """Where a batch sits in the step's global batch of `total` rows: `parts` stacked pieces
    (e.g. fakes then reals), each the rows [start, start + its size) of its own global batch."""

    start: int | torch.Tensor       # a 0-d device tensor inside a CUDA graph, which takes it as an input
    total: int
    parts: int = 1

    def stacked(self, parts: int) -> "Rows":
        return Rows(self.start, self.total, parts)

    def cut(self, full: torch.Tensor, count: int) -> torch.Tensor:
        """This batch's `count` rows of `full`, a tensor drawn for all `parts * total` rows."""
        size = count // self.parts
        if isinstance(self.start, torch.Tensor):
            index = self.start + torch.arange(size, device=full.device)
            pieces = [full.index_select(0, index + p * self.total) for p in range(self.parts)]
        else:
            if size * self.parts != count or self.start + size > self.total:
                raise ValueError(f"a batch of {count} does not fit rows {self.start}+ of {self.parts} x {self.total}")
            pieces = [full[p * self.total + self.start:p * self.total + self.start + size] for p in range(self.parts)]
        return pieces[0] if self.parts == 1 else torch.cat(pieces)

    def full_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.parts * self.total, *shape[1:])


def rand(shape: tuple[int, ...], device: torch.device, rows: Rows | None = None) -> torch.Tensor:
    """`torch.rand(shape)`; with `rows`, the block's rows of a draw for the whole global batch."""
    if rows is None:
        return torch.rand(shape, device=device)
    return rows.cut(torch.rand(rows.full_shape(shape), device=device), shape[0])


def randn(shape: tuple[int, ...], device: torch.device, rows: Rows | None = None) -> torch.Tensor:
    """`torch.randn(shape)`; with `rows`, as `rand`."""
    if rows is None:
        return torch.randn(shape, device=device)
    return rows.cut(torch.randn(rows.full_shape(shape), device=device), shape[0])


def randint(high: int, shape: tuple[int, ...], device: torch.device, rows: Rows | None = None) -> torch.Tensor:
    """`torch.randint(high, shape)`; with `rows`, as `rand`."""
    if rows is None:
        return torch.randint(high, shape, device=device)
    return rows.cut(torch.randint(high, rows.full_shape(shape), device=device), shape[0])


@contextlib.contextmanager
def keyed(seed: int, step: int, stream: str, device: torch.device) -> Iterator[None]:
    """Inside: the CPU and `device` generators seeded from (seed, step, stream); afterwards they
    continue as if nothing had been drawn. A CUDA graph replayed inside draws from that seed too."""
    digest = hashlib.sha256(f"{seed}:{step}:{stream}".encode()).digest()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        yield


__all__ = ["Rows", "keyed", "rand", "randint", "randn"]

"""Deterministic assignment of whole clips to shards, balanced by frame count."""
from __future__ import annotations

import heapq

from .layout import Clip


def assign(clips: list[Clip], shard_count: int) -> list[list[Clip]]:
    """Shard i's clips: largest first onto the least loaded shard (ties: lower index), same order
    on every node since it depends only on the sorted clip list."""
    shards: list[list[Clip]] = [[] for _ in range(shard_count)]
    loads = [(0, i) for i in range(shard_count)]
    heapq.heapify(loads)
    for clip in sorted(clips, key=lambda c: (-c.weight, c.key)):
        load, index = heapq.heappop(loads)
        shards[index].append(clip)
        heapq.heappush(loads, (load + clip.weight, index))
    return [sorted(s, key=lambda c: c.key) for s in shards]

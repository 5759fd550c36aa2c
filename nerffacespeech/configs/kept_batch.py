"""The total batch of a checkpoint written by another world size, kept on resume (torch-free:
the training tasks apply it at start-up, the launcher's config check at `resume --set`)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from launcher.checkpoint_health import LATEST, MANIFEST


def recorded_batch(checkpoint_dir: Path) -> tuple[int, int, str] | None:
    """(world size, total batch, step folder) of the newest committed checkpoint, where it
    recorded both (its manifest and its `progress` dict); None otherwise."""
    try:
        folder = checkpoint_dir / (checkpoint_dir / LATEST).read_text().strip()
        written_by = json.loads((folder / MANIFEST).read_text())["world_size"]
        total = json.loads((folder / "progress.json").read_text())["batch_total"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(written_by), int(total), folder.name


def split_batch(total: int, world_size: int, max_per_gpu: int) -> tuple[int, int] | None:
    """(per-rank batch, micro-batches accumulated) giving exactly `total` images per optimizer
    step on `world_size` ranks, the per-rank batch as large as `max_per_gpu` allows; None when
    no split is even."""
    for per_gpu in range(min(max_per_gpu, total // world_size), 0, -1):
        if total % (per_gpu * world_size) == 0:
            return per_gpu, total // (per_gpu * world_size)
    return None


def kept_batch_total(parsed: Any, resolved: Any, recorded: tuple[int, int, str] | None, world_size: int) -> Any:
    """`resolved`, or, when resuming a checkpoint written by another world size, the same with
    that checkpoint's total batch and a per-rank batch (at most the configured one) and gradient
    accumulation that make it up: the samples per step, and so the training, do not depend on
    how many ranks share them. A `batch_total` set in the config wins (a change on purpose).
    Raises ValueError when this world size cannot share the total evenly."""
    if recorded is None or parsed.batch_total is not None:
        return resolved
    written_by, total, folder = recorded
    if written_by == world_size or total == resolved.batch_total:
        return resolved
    split = split_batch(total, world_size, resolved.batch_per_gpu)
    if split is None:
        fitting = [n for n in range(1, total + 1) if split_batch(total, n, resolved.batch_per_gpu)]
        raise ValueError(
            f"checkpoint {folder} was trained with {total} samples per step on {written_by} rank(s); {world_size} "
            f"ranks cannot share {total} evenly with at most {resolved.batch_per_gpu} per rank: resume on "
            f"{', '.join(map(str, fitting[:8]))}{' ...' if len(fitting) > 8 else ''} ranks, or set batch_total "
            "in the config to change the total batch on purpose")
    return replace(resolved, batch_total=total, batch_per_gpu=split[0])

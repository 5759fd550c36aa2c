"""What a task function receives: its stage's config and where its run lives.

Built by `launcher.entry` in every rank before the task runs; plain data, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..layout import RunLayout, StageLayout


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to write periodic checkpoints and which ones to keep."""

    every_steps: int = 1000
    every_minutes: float = 0.0      # 0 disables the time trigger
    keep_last: int = 3
    keep_every: int = 0             # also keep every step that is a multiple of this (0: none)
    async_save: bool = False


@dataclass(frozen=True)
class TaskContext:
    run_dir: Path
    stage: str
    config: dict[str, Any]
    shard_index: int = 0
    shard_count: int = 1
    attempt: int = 0                # 0 on the first start, +1 per restart or requeue
    device: str = "auto"            # cpu | cuda | auto
    checkpoint: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    stop: Any = None                # launcher.runtime.preemption.StopRequest, installed by entry

    @property
    def run_layout(self) -> RunLayout:
        """The whole run's paths: earlier stages' outputs and the processed data."""
        return RunLayout(Path(self.run_dir))

    @property
    def layout(self) -> StageLayout:
        return self.run_layout.stage(self.stage)

    # The stage's paths (launcher.layout) under the names tasks use.
    stage_dir = property(lambda self: self.layout.path)
    checkpoint_dir = property(lambda self: self.layout.checkpoints)
    tensorboard_dir = property(lambda self: self.layout.tensorboard)
    metrics_path = property(lambda self: self.layout.metrics)
    samples_dir = property(lambda self: self.layout.samples)

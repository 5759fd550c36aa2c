"""The run directory's layout: every path under RUN_ROOT/<run-id>/ is named here and nowhere else.

Plain paths, no I/O and no torch: the CLI, the supervisors, the job processes and the workload's
tasks (which read earlier stages' outputs) all take their paths from these two objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class StageLayout:
    """`<run>/stages/<stage>/`: what one stage's processes write."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def latest_checkpoint(self) -> Path:
        """The `latest` pointer the checkpoint manager moves on every commit."""
        return self.checkpoints / "latest"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def rank_log(self, attempt: int, shard: int | None, rank: int) -> Path:
        """attempt-<k>[/shard-<i>]/rank-<r>.log (the shard level only for array stages)."""
        folder = self.logs / f"attempt-{attempt}"
        return (folder / f"shard-{shard}" if shard is not None else folder) / f"rank-{rank}.log"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def shard_lock(self, shard: int) -> Path:
        return self.path / "locks" / f"shard-{shard}.lock"

    def outcome(self, shard: int, attempt: int) -> Path:
        """Rank 0's record of how one attempt of one shard ended."""
        return self.path / "outcomes" / f"shard-{shard}-attempt-{attempt}.json"


@dataclass(frozen=True)
class RunLayout:
    """`<run>/`: the frozen spec, the plan, the ledger, the markers, the stages and the data."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    def ledger(self, stage: str) -> Path:
        return self.path / "ledger" / stage

    @property
    def cancel_marker(self) -> Path:
        return self.path / "cancel-requested"

    @property
    def supervisor_lock(self) -> Path:
        return self.path / "supervisor.lock"

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    def stage(self, name: str) -> StageLayout:
        return StageLayout(self.path / "stages" / name)

    @property
    def processed_data(self) -> Path:
        """Where `preprocess` writes and `preprocess.merge` completes the processed dataset."""
        return self.path / "data" / "processed"

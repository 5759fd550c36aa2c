"""The run directory's layout: every path under RUN_ROOT/<run-id>/ is named here and nowhere else.

Plain paths, no I/O and no torch: the CLI, the supervisors, the job processes and the workload's
tasks (which read earlier stages' outputs) all take their paths from these two objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _under(*parts: str) -> property:
    """A fixed path below the layout's own folder."""
    return property(lambda self: self.path.joinpath(*parts))


@dataclass(frozen=True)
class StageLayout:
    """`<run>/stages/<stage>/`: what one stage's processes write."""

    path: Path

    checkpoints = _under("checkpoints")
    latest_checkpoint = _under("checkpoints", "latest")   # moved by the checkpoint manager on each commit
    logs = _under("logs")
    tensorboard = _under("tensorboard")
    metrics = _under("metrics.jsonl")
    samples = _under("samples")
    submitit_folder = _under("submitit")          # submitit's pickles and job records (Slurm)
    final_record = _under("final.json")            # a training stage's last step and state digests
    outputs = _under("outputs.json")               # what `generate` wrote
    compile_cache = _under("compile-cache")        # torch.compile's caches, reused by later attempts

    def rank_log(self, attempt: int, shard: int | None, rank: int) -> Path:
        """attempt-<k>[/shard-<i>]/rank-<r>.log (the shard level only for array stages)."""
        folder = self.logs / f"attempt-{attempt}"
        return (folder / f"shard-{shard}" if shard is not None else folder) / f"rank-{rank}.log"

    def heartbeats(self, shard: int, attempt: int) -> Path:
        """heartbeats/shard-<i>/attempt-<k>/: one rank-<r>.json per rank (launcher.heartbeat)."""
        return self.path / "heartbeats" / f"shard-{shard}" / f"attempt-{attempt}"

    def heartbeat(self, shard: int, attempt: int, rank: int) -> Path:
        return self.heartbeats(shard, attempt) / f"rank-{rank}.json"

    def shard_lock(self, shard: int) -> Path:
        return self.path / "locks" / f"shard-{shard}.lock"

    def outcome(self, shard: int, attempt: int) -> Path:
        """Rank 0's record of how one attempt of one shard ended."""
        return self.path / "outcomes" / f"shard-{shard}-attempt-{attempt}.json"

    def rank_failure(self, shard: int, attempt: int, rank: int) -> Path:
        """The exception of a rank other than 0 that failed in one attempt of one shard."""
        return self.path / "outcomes" / f"shard-{shard}-attempt-{attempt}-rank-{rank}-failure.json"


@dataclass(frozen=True)
class RunLayout:
    """`<run>/`: the frozen spec, the plan, the ledger, the markers, the stages and the data."""

    path: Path

    spec = _under("spec.yaml")
    plan = _under("plan.json")
    cancel_marker = _under("cancel-requested")
    supervisor_lock = _under("supervisor.lock")
    supervisor_log = _under("supervisor.log")
    report = _under("report.html")                 # `launcher report` writes it
    processed_data = _under("data", "processed")   # `preprocess` writes it, `preprocess.merge` completes it

    def ledger(self, stage: str) -> Path:
        return self.path / "ledger" / stage

    def stage(self, name: str) -> StageLayout:
        return StageLayout(self.path / "stages" / name)

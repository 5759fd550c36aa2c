"""The backend interface: what `launcher.api` (and through it the CLI) and `status` ask of a
backend, and which module answers.

Shaped like TorchX's Scheduler: `render` (the dry run), `submit`, `describe` (states), `jobs`,
`live`, `cancel`, and `log_files`. One module per backend (`local`, `slurm`); the plan's
`backend` field picks it, and nothing outside this package switches on the backend's name.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..plan import Plan
from ..runs import RunDir

LOST_REASON = "its supervisor is gone without recording the end; `resume` continues from the checkpoint"


@dataclass(frozen=True)
class StageState:
    """What a backend knows of one stage now: its job (id or pid), its state, and a reason that
    replaces the ledger's last one (e.g. why a stage marked running is lost)."""
    job: str
    state: str
    reason: str | None = None


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def render(self, plan: Plan) -> str:
        """Exactly what `submit` would run or hand to the scheduler, for every stage."""

    @abc.abstractmethod
    def submit(self, run: RunDir, plan: Plan, *, detach: bool, echo: Callable[[str], None]) -> int:
        """Start every unfinished stage of `run`; the exit code for the CLI."""

    @abc.abstractmethod
    def describe(self, run: RunDir, plan: Plan) -> dict[str, StageState]:
        """{stage: its state now}; stages never submitted are left out."""

    @abc.abstractmethod
    def jobs(self, run: RunDir, plan: Plan) -> dict[str, list]:
        """{stage: what runs it now}: submitit job objects (Slurm), pids of running attempts (local)."""

    @abc.abstractmethod
    def live(self, run: RunDir, plan: Plan) -> str | None:
        """What of `run` is still alive (a supervisor, jobs Slurm holds), in words; None if nothing."""

    @abc.abstractmethod
    def cancel(self, run: RunDir, plan: Plan) -> str:
        """Ask what is alive to checkpoint and stop (the cancel marker is written already)."""

    def log_files(self, run: RunDir, stage: str, rank: int | None) -> list[Path]:
        """A stage's log files, oldest first; only rank `rank`'s when given."""
        logs = run.stage(stage).logs
        if not logs.is_dir():
            return []
        found = list(logs.glob(f"**/rank-{rank}.log" if rank is not None else "**/*.log"))
        if rank is None:
            found += [p for pattern in self.supervisor_logs for p in logs.glob(pattern)]
        return sorted(set(found), key=lambda p: p.stat().st_mtime)

    supervisor_logs: tuple[str, ...] = ()   # where the backend's supervisor writes, under logs/


def named(name: str) -> Backend:
    """The backend called `name` ("local" or "slurm"); its module is imported only now."""
    return importlib.import_module(f"{__name__}.{name}").BACKEND


def for_plan(plan: Plan) -> Backend:
    return named(plan.backend)

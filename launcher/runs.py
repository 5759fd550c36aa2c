"""The run directory: frozen spec, plan, ledger of attempts, markers. No torch here.

The ledger is a folder of small JSON records, one per submission or attempt, each written
atomically by the one process that owns it, so concurrent array tasks never lose an update.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import atomic, checkpoint_health, exitcodes
from .layout import RunLayout, StageLayout

if TYPE_CHECKING:
    from .plan import Plan


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, root: str | Path, name: str) -> "RunDir":
        root = Path(root).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        while True:
            path = root / new_run_id(name)
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.path)

    def stage(self, name: str) -> StageLayout:
        return self.layout.stage(name)

    def stage_dir(self, stage: str) -> Path:
        return self.stage(stage).path

    @property
    def report_path(self) -> Path:
        """Where `launcher report` writes the run's HTML report."""
        return self.layout.report

    # -- plan and spec -------------------------------------------------------------------
    def write_plan(self, plan: Plan) -> None:
        atomic.write_json(self.layout.plan, plan.to_json())

    def read_plan(self) -> dict:
        return json.loads(self.layout.plan.read_text())

    def write_spec(self, text: str) -> None:
        atomic.write_text(self.layout.spec, text)

    # -- ledger --------------------------------------------------------------------------
    def ledger_dir(self, stage: str) -> Path:
        return self.layout.ledger(stage)

    def record(self, stage: str, key: str, record: dict) -> None:
        """Write (or replace) one ledger record; `key` is owned by exactly one writer."""
        atomic.write_json(self.ledger_dir(stage) / f"{key}.json", record)

    def try_record(self, stage: str, key: str, record: dict) -> str | None:
        """`record`, but a failure (a full disk) is returned as text for the supervisor to print
        instead of ending the supervisor: the attempt then reads as lost, never as running."""
        try:
            self.record(stage, key, record)
            return None
        except OSError as error:
            return f"could not write ledger record {stage}/{key} ({error}): {json.dumps(record)}"

    def records(self, stage: str) -> list[dict]:
        folder = self.ledger_dir(stage)
        if not folder.is_dir():
            return []
        out = []
        for f in sorted(folder.glob("*.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                continue  # a record is replaced atomically; a reader never sees half of one
        return sorted(out, key=lambda r: (r.get("start") or 0, r.get("kind", "")))

    def attempts(self, stage: str, shard: int | None = None) -> list[dict]:
        return [r for r in self.records(stage) if r.get("kind") == "attempt"
                and (shard is None or r.get("shard") == shard)]

    def settle_lost_attempts(self, stage: str, shard: int | None = None) -> list[dict]:
        """Record every attempt still marked running as lost, and return the new records.

        Call only while holding what guarantees that no attempt of `stage` (`shard`) is alive:
        the local supervisor's run lock (after stopping orphans), or the Slurm stage lock. An
        attempt whose supervisor died never wrote its end; its ranks may have (the outcome).
        """
        running = [r for r in self.attempts(stage, shard) if r.get("state") == "running"]
        if not running:
            return []
        step = self.checkpoint_step(stage)
        last = (self.last_metrics(stage) or {}).get("step")
        settled = []
        for record in running:
            outcome = self.read_outcome(stage, record["shard"], record["attempt"]) or {}
            why = "its supervisor died before recording the end"
            if "exit" in outcome:
                why += f"; rank 0 exited {exitcodes.describe(outcome['exit'])}"
            record = {**record, "state": "lost", "end": outcome.get("end") or time.time(),
                      "exit_code": outcome.get("exit"), "error": outcome.get("error"),
                      "signal": outcome.get("signal"), "checkpoint_step": step, "last_step": last,
                      "reason": f"{why}; resumes from checkpoint step {step}"}
            self.record(stage, f"shard-{record['shard']}-attempt-{record['attempt']}", record)
            settled.append(record)
        return settled

    def submissions(self, stage: str) -> list[dict]:
        return [r for r in self.records(stage) if r.get("kind") == "submission"]

    # -- outcomes written by job processes ---------------------------------------------------
    def outcome_path(self, stage: str, shard: int, attempt: int) -> Path:
        return self.stage(stage).outcome(shard, attempt)

    def read_outcome(self, stage: str, shard: int, attempt: int) -> dict | None:
        try:
            return json.loads(self.outcome_path(stage, shard, attempt).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    # -- checkpoints and progress, as the runtime leaves them ----------------------------------
    def checkpoint_step(self, stage: str) -> int | None:
        """Step of the newest committed checkpoint of a stage, from its `latest` pointer."""
        try:
            text = self.stage(stage).latest_checkpoint.read_text()
        except OSError:
            return None
        digits = re.findall(r"\d+", text)
        return int(digits[-1]) if digits else None

    def quarantined_since(self, stage: str, since: float) -> list[str]:
        """One line per checkpoint of `stage` quarantined since `since`, for a supervisor to print."""
        return [f"checkpoint {q['name']} quarantined: {q['reason']}"
                for q in checkpoint_health.quarantined(self.stage(stage).checkpoints) if q.get("time", 0) >= since]

    def last_metrics(self, stage: str) -> dict | None:
        path = self.stage(stage).metrics
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 8192))
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
        return None

    # -- markers ---------------------------------------------------------------------------
    def request_cancel(self) -> None:
        atomic.write_text(self.layout.cancel_marker, f"{time.time()}\n")

    @property
    def cancel_requested(self) -> bool:
        return self.layout.cancel_marker.exists()

    def allow_fresh_start(self, stage: str) -> None:
        """Let `stage` start from step 0 if none of its checkpoints is usable (read by the runtime)."""
        atomic.write_text(self.stage(stage).checkpoints / checkpoint_health.FRESH_START, f"{time.time()}\n")

    def clear_cancel(self) -> None:
        try:
            self.layout.cancel_marker.unlink()
        except FileNotFoundError:
            pass


def find_run(run: str, roots: list[Path]) -> RunDir:
    """A run given as a path or as an id under one of `roots` (FileNotFoundError otherwise)."""
    direct = Path(run).expanduser()
    if RunLayout(direct).plan.is_file():
        return RunDir(direct.resolve())
    for root in roots:
        candidate = root / run
        if RunLayout(candidate).plan.is_file():
            return RunDir(candidate.resolve())
    matches = [p for root in roots if root.is_dir() for p in root.iterdir()
               if p.name.startswith(run) and RunLayout(p).plan.is_file()]
    if len(matches) == 1:
        return RunDir(matches[0].resolve())
    if len(matches) > 1:
        raise FileNotFoundError(f"{run!r} matches several runs: "
                                + ", ".join(sorted(m.name for m in matches)))
    raise FileNotFoundError(f"no run {run!r} (looked in {', '.join(str(r) for r in roots)})")

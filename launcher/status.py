"""Tables for `status` and `list`: the run directory's ledger, checkpoints and metrics, with
each stage's job and state as the run's backend describes them (launcher.backends)."""
from __future__ import annotations

import time
from pathlib import Path

from . import backends, checkpoint_health, failures, heartbeat, plan as planner, progress
from .layout import RunLayout
from .runs import RunDir


def _fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def stage_progress(run: RunDir, stage: planner.StagePlan, state: str) -> str:
    """The progress column: launcher.progress's line; rate and ETA only while the stage runs."""
    rows = progress.tail_rows(run.stage(stage.name).metrics)
    return progress.from_rows(rows, stage.config).line(running=progress.state_kind(state) == "running")


def attempt_count(attempts: list[dict]) -> str:
    """The attempts of a stage as the most any one shard took: two shards that ran once each
    took one attempt each, not two (a stage without an array is its one shard)."""
    per_shard: dict[int, int] = {}
    for record in attempts:
        per_shard[record.get("shard", 0)] = per_shard.get(record.get("shard", 0), 0) + 1
    return str(max(per_shard.values(), default=0))


def stragglers(run: RunDir, stage: str) -> list[str]:
    """The stragglers of each shard's newest attempt (launcher.heartbeat.stragglers), in words."""
    newest: dict[int, int] = {}
    for record in run.attempts(stage):
        shard = record.get("shard", 0)
        newest[shard] = max(newest.get(shard, 0), record.get("attempt", 0))
    found = []
    for shard, attempt in sorted(newest.items()):
        beats = heartbeat.read_all(run.stage(stage).heartbeats(shard, attempt))
        prefix = f"shard {shard} " if len(newest) > 1 else ""
        found += [prefix + s.describe() for s in heartbeat.stragglers(beats)]
    return found


def world_sizes(attempts: list[dict]) -> str:
    """The ranks of each attempt of shard 0, oldest first ("2,3,2": resumed on 3 ranks, then on
    2); "-" before the first attempt, "?" for an attempt recorded without it."""
    sizes = [str(r.get("world_size") or "?") for r in attempts if r.get("shard", 0) == 0]
    return ",".join(sizes[-8:]) if sizes else "-"


def _last_reason(attempts: list[dict]) -> str:
    """The last attempt's reason, after its exception (type, message, where) when it failed."""
    if not attempts:
        return ""
    error = failures.one_line(attempts[-1])
    reason = attempts[-1].get("reason") or ""
    return f"{error}; {reason}" if error and reason else error or reason


def stage_rows(run: RunDir) -> list[list[str]]:
    plan = planner.load(run.path)
    described = backends.for_plan(plan).describe(run, plan)
    rows = []
    for stage in plan.stages:
        name = stage.name
        attempts = run.attempts(name)
        now = described.get(name, backends.StageState("-", "not submitted"))
        job, state = now.job, now.state
        reason = now.reason or _last_reason(attempts)
        quarantined = checkpoint_health.quarantined(run.stage(name).checkpoints)
        if quarantined:
            reason = f"{len(quarantined)} checkpoint(s) quarantined, last: {quarantined[-1]['name']} " \
                     f"({quarantined[-1]['reason']}); " + reason
        slow = stragglers(run, name)
        if slow:
            reason = "; ".join(slow) + ("; " + reason if reason else "")
        step = run.checkpoint_step(name)
        rows.append([name, job, state, attempt_count(attempts), world_sizes(attempts), "-" if step is None else str(step),
                     stage_progress(run, stage, state), reason[:160]])
    return rows


def run_table(run: RunDir) -> str:
    head = f"run {run.run_id}  backend {planner.load(run.path).backend}  dir {run.path}"
    if run.cancel_requested:
        head += "  (cancel requested)"
    table = _fmt_table(["stage", "job", "state", "attempts", "ranks", "ckpt step", "progress", "last reason"],
                       stage_rows(run))
    return head + "\n" + table + "\n" + report_line(run)


def report_line(run: RunDir) -> str:
    """Where the run's HTML report is; status never writes it (`launcher report` does)."""
    try:
        written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.report_path.stat().st_mtime))
        return f"report {run.report_path} (written {written}; `python -m launcher report {run.run_id}` refreshes it)"
    except FileNotFoundError:
        return f"report {run.report_path} (not written yet: `python -m launcher report {run.run_id}`)"


def runs_overview(root: Path) -> str:
    runs = sorted((p for p in root.glob("*") if RunLayout(p).plan.is_file()),
                  key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    if not runs:
        return f"no runs under {root}"
    rows = []
    for path in runs:
        run = RunDir(path)
        states = [r[2] for r in stage_rows(run)]
        rows.append([run.run_id, planner.load(path).backend,
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)),
                     ", ".join(states)])
    return _fmt_table(["run", "backend", "modified", "stage states"], rows)

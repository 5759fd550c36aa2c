"""Tables for `status` and `list`: the run directory's ledger, checkpoints and metrics, with
each stage's job and state as the run's backend describes them (launcher.backends)."""
from __future__ import annotations

import time
from pathlib import Path

from . import backends, checkpoint_health, plan as planner
from .runs import RunDir


def _fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _progress(metrics: dict | None) -> str:
    if not metrics:
        return "-"
    parts = []
    if "step" in metrics:
        total = metrics.get("total_steps")
        parts.append(f"step {metrics['step']}" + (f"/{total}" if total else ""))
    for key in ("items_done", "kimg"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]}")
    for key in ("images_per_s", "samples_per_s", "steps_per_s", "items_per_s"):
        if key in metrics:
            parts.append(f"{metrics[key]:.3g} {key.replace('_per_s', '')}/s")
            break
    return ", ".join(parts) or "-"


def stage_rows(run: RunDir) -> list[list[str]]:
    plan = planner.load(run.path)
    described = backends.for_plan(plan).describe(run, plan)
    rows = []
    for stage in plan.stages:
        name = stage.name
        attempts = run.attempts(name)
        now = described.get(name, backends.StageState("-", "not submitted"))
        job, state = now.job, now.state
        reason = now.reason or (attempts[-1].get("reason") if attempts else None) or ""
        quarantined = checkpoint_health.quarantined(run.stage_dir(name) / "checkpoints")
        if quarantined:
            reason = f"{len(quarantined)} checkpoint(s) quarantined, last: {quarantined[-1]['name']} " \
                     f"({quarantined[-1]['reason']}); " + reason
        step = run.checkpoint_step(name)
        rows.append([name, job, state, str(len(attempts)), "-" if step is None else str(step),
                     _progress(run.last_metrics(name)), reason[:160]])
    return rows


def run_table(run: RunDir) -> str:
    head = f"run {run.run_id}  backend {planner.load(run.path).backend}  dir {run.path}"
    if run.cancel_requested:
        head += "  (cancel requested)"
    table = _fmt_table(["stage", "job", "state", "attempts", "ckpt step", "progress", "last reason"],
                       stage_rows(run))
    return head + "\n" + table


def runs_overview(root: Path) -> str:
    runs = sorted((p for p in root.glob("*") if (p / "plan.json").is_file()),
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

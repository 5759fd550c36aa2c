"""Tables for `status` and `list`, and log lookup for `logs`; reads the run directory only
(plus squeue/scontrol for Slurm runs)."""
from __future__ import annotations

import time
from pathlib import Path

from . import checkpoint_health
from .backends import local as local_backend
from .runs import RunDir


LOST_REASON = "its supervisor is gone without recording the end; `resume` continues from the checkpoint"


def _fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _progress(metrics: dict | None) -> str:
    """The last metrics line as progress, from the keys `MetricsWriter` and the tasks write:
    the step, StyleNeRF's kimg, and the first rate present (images/s, items/s, steps/s)."""
    if not metrics:
        return "-"
    parts = []
    if "step" in metrics:
        parts.append(f"step {metrics['step']}")
    if "kimg" in metrics:
        parts.append(f"kimg {metrics['kimg']}")
    for key, unit in (("images_per_s", "images"), ("throughput", "items"), ("steps_per_s", "steps")):
        if key in metrics:
            parts.append(f"{metrics[key]:.3g} {unit}/s")
            break
    return ", ".join(parts) or "-"


def stage_rows(run: RunDir) -> list[list[str]]:
    plan = run.read_plan()
    slurm_states = {}
    if plan["backend"] == "slurm":
        from .backends import slurm
        slurm_states = slurm.job_states(run, plan)
    alive = plan["backend"] == "local" and local_backend.supervisor_lock(run).is_held()
    rows = []
    for stage in plan["stages"]:
        name = stage["name"]
        attempts = run.attempts(name)
        last = attempts[-1] if attempts else None
        reason = (last or {}).get("reason") or ""
        if plan["backend"] == "slurm":
            job, state = slurm_states.get(name, ("-", "not submitted"))
            if state == "running":          # the ledger says so, but Slurm no longer holds the job
                state, reason = "lost", LOST_REASON
        else:
            job = last["job_id"] if last else "-"
            state = local_backend.stage_state(run, stage) or ("pending" if alive else "not started")
            if state == "running" and not alive:
                state, reason = "lost", LOST_REASON
        quarantined = checkpoint_health.quarantined(run.stage(name).checkpoints)
        if quarantined:
            reason = f"{len(quarantined)} checkpoint(s) quarantined, last: {quarantined[-1]['name']} " \
                     f"({quarantined[-1]['reason']}); " + reason
        step = run.checkpoint_step(name)
        rows.append([name, job, state, str(len(attempts)), "-" if step is None else str(step),
                     _progress(run.last_metrics(name)), reason[:160]])
    return rows


def run_table(run: RunDir) -> str:
    plan = run.read_plan()
    head = f"run {run.run_id}  backend {plan['backend']}  dir {run.path}"
    if run.cancel_requested:
        head += "  (cancel requested)"
    table = _fmt_table(["stage", "job", "state", "attempts", "ckpt step", "progress", "last reason"],
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
    runs = sorted((p for p in root.glob("*") if (p / "plan.json").is_file()),
                  key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    if not runs:
        return f"no runs under {root}"
    rows = []
    for path in runs:
        run = RunDir(path)
        states = [r[2] for r in stage_rows(run)]
        rows.append([run.run_id, run.read_plan()["backend"],
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)),
                     ", ".join(states)])
    return _fmt_table(["run", "backend", "modified", "stage states"], rows)


def log_files(run: RunDir, stage: str | None, rank: int | None) -> list[Path]:
    """Log files of a run, oldest attempt first; narrowed to a stage and a rank if given."""
    stages = [stage] if stage else [s["name"] for s in run.read_plan()["stages"]]
    files: list[Path] = []
    for name in stages:
        logs = run.stage(name).logs
        if not logs.is_dir():
            continue
        pattern = f"**/rank-{rank}.log" if rank is not None else "**/*.log"
        found = list(logs.glob(pattern))
        if rank is None:
            found += list(logs.glob("**/*.out"))
        files += sorted(set(found), key=lambda p: p.stat().st_mtime)
    return files

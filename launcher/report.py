"""`launcher report RUN`: one self-contained HTML page (RUN/report.html) to see a run at a glance.

The stages with their dependencies and states, a timeline of every attempt (how each ended, the
checkpoint step it resumed from and saved at, the checkpoints committed), throughput and losses
over steps, the latest sample image and an ETA. Everything is read from the run directory (and
the backend's states, through `status`); plots and images are inlined, so the page needs no
network and can be copied off the cluster. Written atomically: a reader never sees half a page.
Imports matplotlib (through report_plots): the CLI imports this module only for `report`.
"""
from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path

from . import atomic, failures, plan as planner, progress, report_plots as plots, status
from .runs import RunDir

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".svg": "image/svg+xml"}
MAX_INLINE_IMAGE_BYTES = 8 * 2 ** 20     # a larger sample is linked by path, not inlined
MAX_SHARD_ROWS = 16                      # a larger array stage gets one timeline row


@dataclass(frozen=True)
class StageView:
    """What the report shows of one stage, gathered from the run directory."""
    name: str
    after: list[str]
    row: dict[str, str]                  # the `status` row: job, state, attempts, ckpt step, ...
    attempts: list[dict]                 # ledger attempt records plus resumed_from / saved_at
    commits: list[tuple[float, int]]     # (time, step) of each retained committed checkpoint
    metrics: list[dict]
    sample: Path | None
    eta: str


def collect(run: RunDir) -> list[StageView]:
    plan = planner.load(run.path)
    header = ["stage", "job", "state", "attempts", "ranks", "ckpt step", "progress", "last reason"]
    rows = {row[0]: dict(zip(header, row)) for row in status.stage_rows(run)}
    views = []
    for stage in plan.stages:
        name = stage.name
        metrics = read_metrics(run.stage(name).metrics)
        views.append(StageView(
            name=name, after=list(stage.after), row=rows[name],
            attempts=with_checkpoint_steps(run.attempts(name)),
            commits=checkpoint_commits(run.stage(name).checkpoints), metrics=metrics,
            sample=latest_sample(run.stage(name).samples),
            eta=eta(metrics, stage.config or {}, rows[name]["state"])))
    return views


def with_checkpoint_steps(attempts: list[dict]) -> list[dict]:
    """Each attempt with `resumed_from` (the step its shard's previous attempt left committed;
    None for a first attempt) and `saved_at` (the committed step when it ended; None while running)."""
    out, last_of_shard = [], {}
    for record in attempts:
        previous = last_of_shard.get(record.get("shard"))
        ended = record.get("state") != "running"
        out.append({**record, "resumed_from": previous.get("checkpoint_step") if previous else None,
                    "saved_at": record.get("checkpoint_step") if ended else None})
        last_of_shard[record.get("shard")] = record
    return out


def read_metrics(path: Path) -> list[dict]:
    try:
        return progress.metric_rows(path.read_text(encoding="utf-8", errors="replace").splitlines())
    except OSError:
        return []


def checkpoint_commits(folder: Path) -> list[tuple[float, int]]:
    commits = []
    for manifest in folder.glob("step-*/manifest.json"):
        try:
            record = json.loads(manifest.read_text())
            commits.append((float(record["created"]), int(record["step"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(commits)


def latest_sample(folder: Path) -> Path | None:
    images = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_TYPES and p.is_file()] \
        if folder.is_dir() else []
    return max(images, key=lambda p: p.stat().st_mtime) if images else None


def eta(metrics: list[dict], config: dict, state: str) -> str:
    """Time left at the recent rate (launcher.progress: the mean steps/s of the last metric lines)
    to the total steps (the metrics' `total_steps`, else the stage config's `steps`)."""
    state = progress.state_kind(state)
    if state == "completed":
        return "done"
    if not metrics:
        return "unknown (no metrics yet)"
    now = progress.from_rows(metrics[-progress.RATE_WINDOW:], config)
    if now.total is None:
        return "unknown (the task logs no total_steps)"
    if now.seconds_left is None:
        return "unknown (no rate yet)"
    paused = "" if state == "running" else f" once running again (state {state})"
    return (f"{progress.duration(now.seconds_left)} for {max(0, now.total - now.step)} more step(s) "
            f"at {now.steps_per_s:.3g} steps/s{paused}")


def write_report(run: RunDir) -> Path:
    """Collect, plot and write RUN/report.html atomically; returns its path."""
    page = render(run, collect(run), now=time.time())
    atomic.write_text(run.report_path, page)
    return run.report_path


def render(run: RunDir, views: list[StageView], now: float) -> str:
    plan = planner.load(run.path)
    starts = [a["start"] for v in views for a in v.attempts if a.get("start")]
    origin = min(starts) if starts else now
    graph = plots.dependency_graph([{"name": v.name, "after": v.after, "state": v.row["state"]} for v in views])
    timeline_rows = [(label, attempts, v.commits) for v in views for label, attempts in _shard_rows(v)]
    parts = [
        f"<h1>run {_e(run.run_id)}</h1>",
        f"<p>backend {_e(plan.backend)} &middot; directory <code>{_e(run.path)}</code> &middot; "
        f"report written {_e(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now)))}"
        + (" &middot; <b>cancel requested</b>" if run.cancel_requested else "") + "</p>",
        "<h2>Stages</h2>", _img(graph, "stage dependency graph", "graph"),
        _stage_table(views),
        "<h2>Timeline of attempts</h2>",
        _img(plots.timeline(timeline_rows, origin, now), "timeline of attempts", "timeline"),
    ]
    for view in views:
        parts.append(_stage_section(view))
    return PAGE.format(title=_e(f"run {run.run_id}"), body="\n".join(parts))


def _shard_rows(view: StageView) -> list[tuple[str, list[dict]]]:
    """Timeline rows of a stage: one per shard, or one for all when it has more than MAX_SHARD_ROWS."""
    shards = sorted({a.get("shard", 0) for a in view.attempts})
    if len(shards) <= 1:
        return [(view.name, view.attempts)]
    if len(shards) > MAX_SHARD_ROWS:
        return [(f"{view.name} ({len(shards)} shards)", view.attempts)]
    return [(f"{view.name}[{s}]", [a for a in view.attempts if a.get("shard", 0) == s]) for s in shards]


def _stage_table(views: list[StageView]) -> str:
    head = ["stage", "after", "state", "job", "attempts", "ckpt step", "progress", "ETA", "last reason"]
    rows = [[v.name, ", ".join(v.after) or "-", v.row["state"], v.row["job"], v.row["attempts"],
             v.row["ckpt step"], v.row["progress"], v.eta, v.row["last reason"]] for v in views]
    return _table(head, rows, state_column=2)


def _stage_section(view: StageView) -> str:
    parts = [f"<h2 id='stage-{_e(view.name)}'>Stage {_e(view.name)}</h2>", f"<p>ETA: {_e(view.eta)}</p>"]
    head = ["attempt", "shard", "job", "start", "end", "duration", "ended as", "exit", "signal",
            "resumed from step", "saved at step", "reason"]
    rows = [[a.get("attempt"), a.get("shard"), a.get("job_id"), _clock(a.get("start")), _clock(a.get("end")),
             progress.duration(a["end"] - a["start"]) if a.get("end") and a.get("start") else "-",
             a.get("state"), a.get("outcome") or "-", a.get("signal") or "-",
             _or_dash(a["resumed_from"]), _or_dash(a["saved_at"]),
             "; ".join(filter(None, [failures.one_line(a), a.get("reason")]))]   # the cause first
            for a in view.attempts]
    parts.append(_table(head, rows, state_column=6) if rows else "<p>no attempts yet</p>")
    resumed = [a["resumed_from"] for a in view.attempts if a["resumed_from"]]
    chart = plots.metrics(view.metrics, resumed) if view.metrics else None
    if chart:
        parts += ["<h3>Throughput and losses</h3>", _img(chart, f"metrics of {view.name}", "metrics")]
    if view.sample is not None:
        parts.append(f"<h3>Latest sample: {_e(view.sample.name)}</h3>")
        size = view.sample.stat().st_size
        if size <= MAX_INLINE_IMAGE_BYTES:
            data = view.sample.read_bytes()
            parts.append(_img(data, f"latest sample of {view.name}", "sample",
                              IMAGE_TYPES[view.sample.suffix.lower()]))
        else:
            parts.append(f"<p>{size} bytes, too large to inline: <code>{_e(view.sample)}</code></p>")
    return "\n".join(parts)


def _table(head: list[str], rows: list[list], state_column: int) -> str:
    """An HTML table whose `state_column` cells are coloured by state, as in the plots."""
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = []
    for row in rows:
        tds = []
        for i, value in enumerate(row):
            state = str(value)
            style = f" style='background:{plots.state_color(state)};color:{plots.text_color(state)}'" \
                if i == state_column else ""
            tds.append(f"<td{style}>{_e(_or_dash(value))}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    return f"<table><tr>{cells}</tr>{''.join(body)}</table>"


def _img(data: bytes, alt: str, css_class: str, mime: str = "image/png") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f"<img class='{css_class}' alt='{_e(alt)}' src='data:{mime};base64,{encoded}'>"


def _clock(when: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "-"


def _or_dash(value) -> str:
    return "-" if value is None or value == "" else str(value)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #263238; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }}
th, td {{ border: 1px solid #cfd8dc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }}
th {{ background: #eceff1; }}
img {{ max-width: 100%; }}
img.sample {{ min-width: 384px; image-rendering: pixelated; }}
code {{ font-size: 0.9em; }}
</style></head>
<body>
{body}
</body></html>
"""

"""The run report's plots: matplotlib figures (Agg canvas, no pyplot state) returned as PNG bytes.

Imported only by `launcher report`, so the rest of the CLI never pays for matplotlib.
"""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .progress import state_kind

# Ledger and status states (Slurm's in any case); anything else (a state added later) is drawn
# in OTHER_COLOR.
STATE_COLORS = {
    "completed": "#2e7d32", "running": "#26c6da", "pending": "#b0bec5", "not started": "#eceff1",
    "not submitted": "#eceff1",
    "continue": "#fb8c00", "preempted": "#8e24aa", "requeued": "#1e88e5", "stopped": "#757575",
    "cancelled": "#9e9e9e", "gave-up": "#c62828", "lost": "#6d4c41", "blocked": "#cfd8dc",
}
OTHER_COLOR = "#f06292"
LIGHT_STATES = {"pending", "not started", "not submitted", "blocked"}     # drawn with black text
MAX_LABELLED_ATTEMPTS = 8     # a row with more attempts than this is drawn without labels
NOT_SCALARS = {"step", "time", "steps_per_s", "throughput", "total_steps"}


def state_color(state: str) -> str:
    return STATE_COLORS.get(state_kind(state), OTHER_COLOR)


def text_color(state: str) -> str:
    return "black" if state_kind(state) in LIGHT_STATES else "white"


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out.getvalue()


def dependency_graph(stages: list[dict]) -> bytes:
    """Stages as boxes coloured by state, in columns by dependency depth, arrows from `after`.
    `stages`: [{"name", "after", "state"}] in plan order (dependencies first)."""
    depth: dict[str, int] = {}
    for stage in stages:
        depth[stage["name"]] = 1 + max((depth[d] for d in stage["after"] if d in depth), default=-1)
    columns: dict[int, list[str]] = {}
    for stage in stages:
        columns.setdefault(depth[stage["name"]], []).append(stage["name"])
    tallest = max(len(c) for c in columns.values())
    where = {name: (col * 3.0, (tallest - 1) / 2 - row)
             for col, names in columns.items() for row, name in enumerate(names)}
    figure = Figure(figsize=(max(4.0, 2.6 * len(columns)), max(1.6, 0.9 * tallest + 0.6)))
    axes = figure.add_subplot()
    for stage in stages:
        x, y = where[stage["name"]]
        for dep in stage["after"]:
            axes.annotate("", xy=(x - 1.0, y), xytext=(where[dep][0] + 1.0, where[dep][1]),
                          arrowprops={"arrowstyle": "->", "color": "#455a64", "lw": 1.5})
        axes.text(x, y, f"{stage['name']}\n{stage['state']}", ha="center", va="center", fontsize=9,
                  color=text_color(stage["state"]),
                  bbox={"boxstyle": "round,pad=0.5", "facecolor": state_color(stage["state"]),
                        "edgecolor": "#263238"})
    xs = [p[0] for p in where.values()]
    ys = [p[1] for p in where.values()]
    axes.set_xlim(min(xs) - 1.4, max(xs) + 1.4)
    axes.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    axes.axis("off")
    return _png(figure)


def timeline(rows: list[tuple[str, list[dict], list[tuple[float, int]]]], origin: float, now: float) -> bytes:
    """One row per stage shard: a bar per attempt (start to end, coloured by how it ended, labelled
    with the checkpoint steps it resumed from and saved at) and a tick per committed checkpoint.
    `rows`: [(label, attempts, [(commit time, step)])]; times are epoch seconds, drawn in seconds,
    minutes or hours since `origin`, whichever suits the run's length."""
    span = max([(a["end"] or now) - origin for _, attempts, _ in rows for a in attempts], default=0)
    scale, unit = (1, "seconds") if span < 120 else (60, "minutes") if span < 7200 else (3600, "hours")
    figure = Figure(figsize=(11, 0.9 + 0.75 * len(rows)))
    axes = figure.add_subplot()
    seen_states: dict[str, None] = {}
    for index, (label, attempts, commits) in enumerate(rows):
        y = len(rows) - 1 - index
        for attempt in attempts:
            start = (attempt["start"] - origin) / scale
            end = ((attempt["end"] or now) - origin) / scale
            seen_states[attempt["state"]] = None
            axes.barh(y, max(end - start, 1e-3), left=start, height=0.5,
                      color=state_color(attempt["state"]), edgecolor="#263238")
            if len(attempts) <= MAX_LABELLED_ATTEMPTS:
                axes.text(start, y + 0.3, f"#{attempt['attempt']} {attempt['state']}: {_steps(attempt)}",
                          fontsize=8, va="bottom")
        for when, step in commits:
            axes.plot([(when - origin) / scale] * 2, [y - 0.3, y + 0.3], color="black", lw=1)
    axes.set_yticks(range(len(rows)), [label for label, _, _ in reversed(rows)])
    axes.set_ylim(-0.6, len(rows) - 0.1 + 0.4)
    axes.set_xlabel(f"{unit} since the run's first attempt (black ticks: checkpoints committed)")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(handles=[Patch(color=state_color(s), label=s) for s in seen_states],
                loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="attempt", title_fontsize=8)
    return _png(figure)


def _steps(attempt: dict) -> str:
    """'from step 15, saved 30': the checkpoint an attempt resumed from and the one it left."""
    start = "fresh" if attempt["resumed_from"] is None else f"from step {attempt['resumed_from']}"
    if attempt["state"] == "running":
        return start
    return f"{start}, saved {'none' if attempt['saved_at'] is None else attempt['saved_at']}"


def metrics(rows: list[dict], resumed_at: list[int]) -> bytes | None:
    """Throughput and the losses (then any other scalars) over steps, one panel each, with a
    dashed line where an attempt resumed. None when the rows hold nothing to plot."""
    numeric = [k for k in dict.fromkeys(k for r in rows for k in r)
               if k not in NOT_SCALARS and any(_is_number(r.get(k)) for r in rows)]
    rate = "throughput" if any("throughput" in r for r in rows) else "steps_per_s"
    panels = [(rate, [rate])] if any(rate in r for r in rows) else []
    losses = [k for k in numeric if "loss" in k.lower()]
    others = [k for k in numeric if k not in losses][:8]
    panels += [(title, keys) for title, keys in (("losses", losses), ("other scalars", others)) if keys]
    if not panels:
        return None
    figure = Figure(figsize=(11, 2.6 * len(panels)))
    for index, (title, keys) in enumerate(panels):
        axes = figure.add_subplot(len(panels), 1, index + 1, sharex=figure.axes[0] if index else None)
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if _is_number(r.get(key)) and "step" in r]
            axes.plot([p[0] for p in points], [p[1] for p in points], label=key, lw=1.2,
                      marker="." if len(points) < 60 else None)
        for step in resumed_at:
            axes.axvline(step, color="#757575", ls="--", lw=1)
        axes.set_title(title, fontsize=10, loc="left")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="upper right")
    figure.axes[-1].set_xlabel("step (dashed: an attempt resumed here)")
    return _png(figure)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value

"""How far a stage is, from what its ranks already write (the last lines of metrics.jsonl): the
step of the total, the recent rate, the time left and the last losses. The local supervisor
echoes it while a stage runs (a Console shows it on a terminal or in a log), `status` shows it,
the report's ETA is built on it."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RATE_WINDOW = 20            # metric lines averaged for the rate
TAIL_BYTES = 32768          # read from the end of metrics.jsonl; lines are ~100-800 bytes
RATES = (("images_per_s", "images/s"), ("throughput", "items/s"), ("steps_per_s", "steps/s"))
SCALARS_SHOWN = 4
SHOWN = ("kimg", "augment_p")     # besides loss*: images shown (StyleNeRF), the augmentation probability


def metric_rows(lines: list[str]) -> list[dict]:
    """The metric lines that parse, in order: a torn last line of a live run is skipped."""
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def tail_rows(path: Path, n: int = RATE_WINDOW) -> list[dict]:
    """The last `n` complete metric lines of a metrics file, oldest first."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return metric_rows(lines)[-n:]


@dataclass(frozen=True)
class Progress:
    step: int | None            # steps done, from the last line
    total: int | None           # the loop's total_steps, else the stage config's `steps`
    steps_per_s: float | None   # mean steps_per_s of the lines given
    rate: str | None            # the task's own rate, e.g. "43.1 images/s", else steps/s
    shown: dict[str, float]     # the last line's SHOWN scalars and losses (scalars named loss*)

    @property
    def seconds_left(self) -> float | None:
        if self.step is None or self.total is None or not self.steps_per_s:
            return None
        return max(0, self.total - self.step) / self.steps_per_s

    def line(self, running: bool = True) -> str:
        """'step 120/400 (30%), 2.1 steps/s, ETA 2m 13s, loss 0.412'; rate and ETA only while running
        (a finished stage's last rate is often 0)."""
        if self.step is None:
            return "-"
        parts = [f"step {self.step}/{self.total} ({100 * self.step // self.total}%)" if self.total
                 else f"step {self.step}"]
        if running and self.rate:
            parts.append(self.rate)
        if running and self.seconds_left is not None:
            parts.append(f"ETA {duration(self.seconds_left)}")
        parts += [f"{name} {value:.3g}" for name, value in list(self.shown.items())[:SCALARS_SHOWN]]
        return ", ".join(parts)


def from_rows(rows: list[dict], config: dict | None = None) -> Progress:
    """Progress from the last metric lines (oldest first) and the stage's config."""
    if not rows:
        return Progress(None, None, None, None, {})
    last = rows[-1]
    total = last.get("total_steps") or (config or {}).get("steps")
    rates = [r["steps_per_s"] for r in rows if _number(r.get("steps_per_s"))]
    steps_per_s = sum(rates) / len(rates) if rates else None
    rate = next((f"{last[key]:.3g} {unit}" for key, unit in RATES if _number(last.get(key)) and last[key] > 0), None)
    # from the newest line that has them: an evaluation's line (same step) carries only its metrics
    shown = next(({k: v for k, v in row.items() if (k in SHOWN or k.startswith("loss")) and _number(v)}
                  for row in reversed(rows) if any(k in SHOWN or k.startswith("loss") for k in row)), {})
    return Progress(last.get("step"), total if isinstance(total, int) else None,
                    steps_per_s if steps_per_s else None, rate, shown)


class ProgressLine(str):
    """A supervisor's progress message: a plain string to any echo; a Console rewrites the
    stage's line in place on a terminal, and throttles it elsewhere."""

    def __new__(cls, stage: str, text: str) -> "ProgressLine":
        line = super().__new__(cls, f"[{stage}] {text}")
        line.stage = stage
        return line


class Console:
    """Where the supervisor's messages go: a progress line (ProgressLine) is rewritten in
    place on a terminal and printed at most every `plain_every` seconds per stage elsewhere
    (CI, log files); every other message is a line of its own."""

    def __init__(self, stream=None, interactive: bool | None = None, plain_every: float = 15.0):
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.plain_every = plain_every
        self._live = False                          # a progress line is on screen, unterminated
        self._printed: dict[str, float] = {}        # stage -> when its last plain progress line went out

    def __call__(self, message: str) -> None:
        if isinstance(message, ProgressLine):
            self._progress(message)
        else:
            self._write(message + "\n")

    def _progress(self, line: ProgressLine) -> None:
        if self.interactive:
            self.stream.write("\r\033[K" + line)     # over the stage's previous line
            self.stream.flush()
            self._live = True
            return
        if time.monotonic() - self._printed.get(line.stage, -self.plain_every) >= self.plain_every:
            self._printed[line.stage] = time.monotonic()
            self._write(line + "\n")

    def _write(self, text: str) -> None:
        if self._live:
            self.stream.write("\n")                 # the live line stays, as it was last
            self._live = False
        self.stream.write(text)
        self.stream.flush()


def state_kind(state: str) -> str:
    """A state in lower case; an array's Slurm summary ('3 RUNNING, 5 PENDING') counts as running
    while any shard runs, else as pending while any waits."""
    state = state.lower()
    for live in ("running", "pending"):
        if "," in state and live in state:
            return live
    return state


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

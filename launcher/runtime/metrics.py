"""Training metrics: rank 0 appends one JSON line per log call and mirrors scalars to TensorBoard.

`metrics.jsonl` is what `launcher status` reads (its last line); each line is flushed at once
so a kill loses at most the line being written. A resumed run calls `resume_at(step)` first:
lines of steps it will redo are dropped, so the file keeps one line per logged step.
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from launcher import atomic

if TYPE_CHECKING:
    from launcher.runtime.context import TaskContext
    from launcher.runtime.distributed import DistEnv

log = logging.getLogger(__name__)


class MetricsWriter:
    """Rank 0 writes `{"step", "time", "steps_per_s"?, "throughput"?, "total_steps"?, **scalars}`
    lines; other ranks do nothing. `total_steps` (the loop's) lets status and the supervisor show
    step/total and the time left."""

    def __init__(self, ctx: "TaskContext", env: "DistEnv", tensorboard: bool = True, total_steps: int | None = None):
        self.enabled = env.is_main
        self.total_steps = total_steps
        self.path = ctx.metrics_path
        self.tensorboard_dir = ctx.tensorboard_dir
        self.tensorboard = tensorboard
        self._file = None
        self._board = None
        self._last: tuple[int, float] | None = None      # (step, time) of the previous line
        self._purge_step: int | None = None              # TensorBoard drops events from here on

    def resume_at(self, step: int) -> None:
        """Forget what an earlier attempt logged after `step` (the checkpoint this run resumes
        from): those steps are redone. The file is rewritten atomically; a torn last line goes too."""
        if not self.enabled:
            return
        self._purge_step = step + 1
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        kept = [line for line in lines if (logged := _step_of(line)) is not None and logged <= step]
        if len(kept) != len(lines):
            atomic.write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, step: int, items: int | None = None, **scalars: Any) -> None:
        """Record `scalars` at `step`; `items` processed since the last call gives items/s throughput."""
        if not self.enabled:
            return
        now = time.time()
        record: dict[str, Any] = {"step": step, "time": now}
        if self._last is not None and now > self._last[1]:
            elapsed = now - self._last[1]
            record["steps_per_s"] = (step - self._last[0]) / elapsed
            if items is not None:
                record["throughput"] = items / elapsed
        if self.total_steps is not None:
            record["total_steps"] = self.total_steps
        record.update({k: _plain(v) for k, v in scalars.items()})
        self._last = (step, now)
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._mirror(step, record)

    def _mirror(self, step: int, record: dict) -> None:
        if not self.tensorboard:
            return
        if self._board is None:
            try:
                from torch.utils.tensorboard import SummaryWriter   # imports tensorboard; only here
            except ImportError as error:
                log.warning("no TensorBoard mirror of metrics: %s", error)
                self.tensorboard = False
                return
            self._board = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=self._purge_step)
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) and math.isfinite(value):
                self._board.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._board is not None:
            self._board.close()
            self._board = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Window:
    """Per-step numbers summed until `mean()`, for lines that average a logging interval.

    Device tensors stay on the device (no synchronisation) until `mean()` reads them.
    """

    def __init__(self):
        self._sums: dict[str, Any] = {}
        self.steps = 0

    def add(self, numbers: dict[str, Any]) -> None:
        for key, value in numbers.items():
            value = value.detach().float() if hasattr(value, "detach") else float(value)
            self._sums[key] = self._sums.get(key, 0) + value
        self.steps += 1

    def mean(self) -> dict[str, float]:
        """The means since the last call (as Python floats); starts a new interval."""
        means = {key: float(value) / self.steps for key, value in self._sums.items()}
        self._sums, self.steps = {}, 0
        return means


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _plain(value: Any) -> Any:
    """Tensors and NumPy scalars as Python numbers, so every line is plain JSON."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value

"""Training metrics: rank 0 appends one JSON line per log call and mirrors scalars to TensorBoard.

`metrics.jsonl` is what `launcher status` reads (its last line); each line is flushed at once
so a kill loses at most the line being written.
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.runtime.context import TaskContext
    from launcher.runtime.distributed import DistEnv

log = logging.getLogger(__name__)


class MetricsWriter:
    """Rank 0 writes `{"step", "time", "throughput"?, **scalars}` lines; other ranks do nothing."""

    def __init__(self, ctx: "TaskContext", env: "DistEnv", tensorboard: bool = True):
        self.enabled = env.is_main
        self.path = ctx.metrics_path
        self.tensorboard_dir = ctx.tensorboard_dir
        self.tensorboard = tensorboard
        self._file = None
        self._board = None
        self._last: tuple[int, float] | None = None      # (step, time) of the previous line

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
            self._board = SummaryWriter(log_dir=str(self.tensorboard_dir))
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


def _plain(value: Any) -> Any:
    """Tensors and NumPy scalars as Python numbers, so every line is plain JSON."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value

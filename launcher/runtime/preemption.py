"""Stop requests: a signal sets a flag in every rank; ranks agree on it at a step boundary.

The handler only records the signal (no I/O, no locks), so it is safe at any instant,
including while a checkpoint is being written; the checkpoint protocol makes a kill at any
instant harmless, and the task exits (code 75) only after its checkpoint is committed.
"""
from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Iterable

from launcher import signals as stop_signals
from launcher.exitcodes import STOPPED_FOR_REQUEUE

if TYPE_CHECKING:
    from launcher.runtime.distributed import DistEnv

DEFAULT_SIGNALS = tuple("SIG" + name for name in stop_signals.stop_signals())


class StopForRequeue(Exception):
    """Raised by a task after committing a checkpoint on a stop request; entry exits with 75."""

    exit_code = STOPPED_FOR_REQUEUE

    def __init__(self, step: int):
        super().__init__(f"stopped for requeue at step {step} after a committed checkpoint")
        self.step = step


class StopRequest:
    """A flag raised by the configured signals (or `request()`), agreed on by all ranks."""

    def __init__(self, signals: Iterable[str | int] = DEFAULT_SIGNALS):
        self.signals = tuple(stop_signals.number(s) for s in signals)
        self._received: list[int] = []      # signal numbers in arrival order; append is atomic

    def install(self, signals: Iterable[str | int] | None = None) -> "StopRequest":
        """Install the flag-setting handler for `signals` (default: the constructor's); main thread only.

        Processes forked from here on start with the stop signals ignored: Slurm signals every
        process of a step, and a helper must not die before its rank has saved.
        """
        if signals is not None:
            self.signals = tuple(stop_signals.number(s) for s in signals)
        for signum in self.signals:
            signal.signal(signum, self._on_signal)
        os.register_at_fork(after_in_child=self._ignore_stop_signals)
        return self

    def stop_when_parent_dies(self) -> None:
        """Have the kernel send the first stop signal when this rank's parent (torchrun's agent,
        or the local supervisor) dies, so an orphaned rank checkpoints and exits."""
        if not stop_signals.die_with_parent(self.signals[0]):
            self._received.append(self.signals[0])

    def shield_child(self, worker_id: int | None = None) -> None:
        """For a helper process of a rank (e.g. a DataLoader `worker_init_fn`): ignore the stop
        signals (torch's worker handler would die of SIGTERM) and die with the rank instead."""
        self._ignore_stop_signals()
        stop_signals.die_with_parent(signal.SIGKILL)

    def _ignore_stop_signals(self) -> None:
        for signum in self.signals:
            signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame) -> None:
        self._received.append(signum)

    def request(self, reason: int = 0) -> None:
        """Ask for a stop from code (e.g. a wall-clock budget); 0 means no signal."""
        self._received.append(reason)

    @property
    def requested(self) -> bool:
        """True once this rank was asked to stop; cheap, for polling inside long non-step work."""
        return bool(self._received)

    @property
    def signal_name(self) -> str | None:
        """The first signal received, e.g. "SIGUSR2", for logs; None if none or requested by code."""
        if not self._received or self._received[0] == 0:
            return None
        return signal.Signals(self._received[0]).name

    def agree(self, env: "DistEnv") -> bool:
        """True on every rank if any rank was asked to stop: one MAX all-reduce of one integer.

        It runs on the CPU control group, so it does not wait for queued GPU work.
        """
        if not env.is_distributed:
            return self.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if self._received else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=env.control_group)
        return bool(flag.item())



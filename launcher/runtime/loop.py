"""The step loop every training task runs: what happens between one step and the next.

    with StepLoop(ctx, env, state, seed=cfg.seed, total_steps=n) as loop:
        start = loop.restore()          # per-rank seeds, the newest checkpoint, metrics rewound to it
        for step in loop.steps():       # start+1 .. n; the task's step, its metrics, its evaluation
            ...
        loop.finish(digest=...)         # rank 0 writes final.json {"step", ...}; all ranks wait

After each step the ranks agree on a stop request; the checkpoint manager saves when one is
due, at the last step, or on a stop (then blocking), and a stop ends in StopForRequeue (exit 75).
A resumed attempt rewinds metrics.jsonl to its checkpoint, so the redone steps log once.
Each rank's heartbeat (launcher.heartbeat) says which step and phase it is in, for the
supervisor's hang watch.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any, Callable, Iterator, Mapping

import torch

from launcher import heartbeat
from launcher.atomic import write_json
from launcher.runtime import checkpoint, distributed, rng
from launcher.runtime.context import TaskContext
from launcher.runtime.metrics import MetricsWriter
from launcher.runtime.preemption import StopForRequeue, StopRequest


class StepLoop:
    """Restore, step, agree on stops, save, requeue and finish, the same way for every task.

    `state` is the checkpoint state (adapters and plain progress dicts, see
    `launcher.runtime.checkpoint`); `before_save` brings it up to date before a save.
    """

    def __init__(self, ctx: TaskContext, env: distributed.DistEnv, state: Mapping[str, Any], *, seed: int,
                 total_steps: int, before_save: Callable[[], None] | None = None):
        self.ctx, self.env, self.state = ctx, env, state
        self.seed, self.total_steps, self.before_save = seed, total_steps, before_save
        self.stop = ctx.stop if ctx.stop is not None else StopRequest()
        self.checkpoints = checkpoint.CheckpointManager(ctx.checkpoint_dir, env, ctx.checkpoint)
        self.metrics = MetricsWriter(ctx, env, total_steps=total_steps)
        self.step = 0                   # steps done
        self._evaluated = False         # the current step ran an evaluation (no straggler sample)
        self.heartbeat = heartbeat.Heartbeat(ctx.layout.heartbeat(ctx.shard_index, ctx.attempt, env.rank),
                                             env.rank)
        self.heartbeat.beat(0, heartbeat.STARTING)

    def restore(self) -> int:
        """Seed this rank's generators, then load the newest usable checkpoint over them (its
        generator states included); drop the metrics of the steps that will be redone."""
        rng.seed_rank(self.seed, self.env.rank)
        self.step = self.checkpoints.restore_latest(self.state)
        self.metrics.resume_at(self.step)
        return self.step

    def steps(self) -> Iterator[int]:
        """Each step number to run (1-based: the steps done once it ends); after each, the end-of-step
        protocol. Raises StopForRequeue after the stop checkpoint is committed."""
        first = self.step + 1           # its time includes compilation: not a straggler's sign
        while self.step < self.total_steps:
            self.step += 1
            started, self._evaluated = time.monotonic(), False
            yield self.step
            voting = time.monotonic()
            stopping = self.stop.agree(self.env)
            if self.step > first and not self._evaluated:   # an evaluation may be rank 0's alone
                self.heartbeat.took(voting - started, time.monotonic() - started)
            self.checkpoints.save_if_due(self.step, self.state, last_step=self.step == self.total_steps,
                                         stopping=stopping, prepare=self._saving)
            self.heartbeat.beat(self.step)
            if stopping:
                raise StopForRequeue(self.step)
        self.heartbeat.beat(self.step, heartbeat.SAVING)
        self.checkpoints.wait()

    def _saving(self) -> None:
        """Runs when a save begins: the heartbeat enters the save's budget, then `before_save`."""
        self.heartbeat.beat(self.step, heartbeat.SAVING)
        if self.before_save is not None:
            self.before_save()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Around a task's evaluation (metrics, sample grids): the heartbeat's phase is
        `evaluating`, whose hang budget (`hang_timeout_evaluate`) is longer than a step's."""
        previous = self.heartbeat.record["phase"]
        self._evaluated = True
        self.heartbeat.beat(self.step, heartbeat.EVALUATING)
        try:
            yield
        finally:
            self.heartbeat.beat(self.step, previous)

    def finish(self, **record: Any) -> None:
        """Rank 0 writes the final record `{"step", **record}` (digests to compare runs by); all
        ranks wait for it, so none leaves before the record exists."""
        if self.env.is_main:
            write_json(self.ctx.layout.final_record, {"step": self.step, **record})
        distributed.barrier(self.env)
        self.heartbeat.beat(self.step, heartbeat.FINISHED)

    def close(self) -> None:
        self.metrics.close()

    def __enter__(self) -> "StepLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors (by name, as float32 bytes): equal digests mean bitwise-equal state."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

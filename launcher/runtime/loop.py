"""The step loop every training task runs: what happens between one step and the next.

    with StepLoop(ctx, env, state, seed=cfg.seed, total_steps=n) as loop:
        start = loop.restore()          # per-rank seeds, the newest checkpoint, metrics rewound to it
        for step in loop.steps():       # start+1 .. n; the task's step, its metrics, its evaluation
            ...
        loop.finish(digest=...)         # rank 0 writes final.json {"step", ...}; all ranks wait

After each step the ranks agree on a stop request; the checkpoint manager saves when one is
due, at the last step, or on a stop (then blocking), and a stop ends in StopForRequeue (exit 75).
A resumed attempt rewinds metrics.jsonl to its checkpoint, so the redone steps log once.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator, Mapping

import torch

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
        while self.step < self.total_steps:
            self.step += 1
            yield self.step
            stopping = self.stop.agree(self.env)
            self.checkpoints.save_if_due(self.step, self.state, last_step=self.step == self.total_steps,
                                         stopping=stopping, prepare=self.before_save)
            if stopping:
                raise StopForRequeue(self.step)
        self.checkpoints.wait()

    def finish(self, **record: Any) -> None:
        """Rank 0 writes the final record `{"step", **record}` (digests to compare runs by); all
        ranks wait for it, so none leaves before the record exists."""
        if self.env.is_main:
            write_json(self.ctx.layout.final_record, {"step": self.step, **record})
        distributed.barrier(self.env)

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

"""The step loop in one process: it saves when the policy says, at the last step and on a stop
(then raises StopForRequeue), resumes from the newest checkpoint with the generators and metrics
rewound to it, seeds each rank's generators, and writes the final record.
(Many ranks, real signals and the launcher: the chaos tests train `launcher.diagnose_train`.)"""
import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from launcher.runtime.checkpoint import RNGState, committed_steps
from launcher.runtime.context import CheckpointPolicy, TaskContext
from launcher.runtime.distributed import single_process_env
from launcher.runtime.loop import StepLoop, tensor_digest
from launcher.runtime.preemption import StopForRequeue, StopRequest

ENV = single_process_env()


def context(tmp_path, every_steps: int = 0) -> TaskContext:
    return TaskContext(run_dir=tmp_path, stage="train", config={}, stop=StopRequest(),
                       checkpoint=CheckpointPolicy(every_steps=every_steps, keep_last=10))


def train(ctx: TaskContext, total: int, stop_at: int | None = None, fail_at: int | None = None) -> dict:
    """A task on the loop: a running value drawn from every generator; returns what it saw."""
    progress = {"value": 0.0}
    seen = {"steps": [], "saved": []}
    with StepLoop(ctx, ENV, {"rng": RNGState(), "progress": progress}, seed=3, total_steps=total,
                  before_save=lambda: seen["saved"].append(progress["value"])) as loop:
        seen["start"] = loop.restore()
        for step in loop.steps():
            if step == fail_at:
                raise RuntimeError("a crash")
            progress["value"] += random.random() + float(np.random.rand()) + torch.rand(()).item()
            loop.metrics.log(step, value=progress["value"])
            seen["steps"].append(step)
            if step == stop_at:
                ctx.stop.request()
        loop.finish(value=progress["value"])
    return seen


def logged_steps(ctx: TaskContext) -> list[int]:
    return [json.loads(line)["step"] for line in ctx.metrics_path.read_text().splitlines()]


def final(ctx: TaskContext) -> dict:
    return json.loads(ctx.layout.final_record.read_text())


def test_saves_when_due_and_at_the_last_step_then_writes_the_final_record(tmp_path):
    ctx = context(tmp_path, every_steps=3)
    seen = train(ctx, total=7)
    assert seen["start"] == 0 and seen["steps"] == list(range(1, 8))
    assert committed_steps(ctx.checkpoint_dir) == [3, 6, 7]           # 7: the last step, not due
    assert len(seen["saved"]) == 3                                    # before_save ran before each save only
    assert final(ctx)["step"] == 7 and logged_steps(ctx) == list(range(1, 8))


def test_a_stop_saves_at_once_and_raises_stop_for_requeue_then_the_run_resumes_there_bitwise(tmp_path):
    reference = context(tmp_path / "reference")
    train(reference, total=9)
    ctx = context(tmp_path / "stopped")
    with pytest.raises(StopForRequeue) as stopped:
        train(ctx, total=9, stop_at=4)
    assert stopped.value.step == 4 and committed_steps(ctx.checkpoint_dir) == [4]
    resumed = train(dataclasses.replace(ctx, stop=StopRequest()), total=9)
    assert resumed["start"] == 4 and resumed["steps"] == list(range(5, 10))
    assert final(ctx) == final(reference)


def test_a_resumed_attempt_logs_each_redone_step_once(tmp_path):
    ctx = context(tmp_path, every_steps=3)
    with pytest.raises(RuntimeError, match="a crash"):
        train(ctx, total=8, fail_at=6)                 # steps 4 and 5 were logged, not checkpointed
    assert logged_steps(ctx) == [1, 2, 3, 4, 5]
    assert train(ctx, total=8)["start"] == 3
    assert logged_steps(ctx) == list(range(1, 9))


def test_a_fresh_start_seeds_the_generators_from_the_seed_and_rank(tmp_path):
    random.seed(3000), np.random.seed(3000), torch.manual_seed(3001)        # seed * 1000 + rank (+ 1)
    expected = random.random(), float(np.random.rand()), torch.rand(()).item()
    with StepLoop(context(tmp_path), ENV, {}, seed=3, total_steps=1) as loop:
        loop.restore()
        assert (random.random(), float(np.random.rand()), torch.rand(()).item()) == expected


def test_the_digest_tells_bitwise_different_tensors_apart():
    a = {"w": torch.ones(3), "b": torch.zeros(1)}
    assert tensor_digest(a) == tensor_digest({"b": torch.zeros(1), "w": torch.ones(3)})
    assert tensor_digest(a) != tensor_digest({"w": torch.ones(3).nextafter(torch.tensor(2.0)), "b": torch.zeros(1)})

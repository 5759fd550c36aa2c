"""Metrics: rank 0 appends flushed JSON lines (what `status` reads) and mirrors them to TensorBoard."""
import dataclasses
import json
import re
import time

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launcher import progress
from launcher.runs import RunDir
from launcher.runtime.context import TaskContext
from launcher.runtime.distributed import single_process_env
from launcher.runtime.metrics import MetricsWriter


def context(tmp_path):
    return TaskContext(run_dir=tmp_path, stage="train", config={})


def test_each_line_is_on_disk_as_soon_as_it_is_logged(tmp_path):
    ctx = context(tmp_path)
    writer = MetricsWriter(ctx, single_process_env())
    writer.log(1, loss=torch.tensor(0.5))
    time.sleep(0.01)
    writer.log(2, items=64, loss=0.25, lr=1e-3)
    lines = [json.loads(line) for line in ctx.metrics_path.read_text().splitlines()]
    writer.close()
    assert [line["step"] for line in lines] == [1, 2]
    assert lines[0]["loss"] == 0.5 and lines[1]["lr"] == 1e-3
    assert lines[1]["throughput"] > 0 and lines[1]["steps_per_s"] > 0
    assert lines[0]["time"] < lines[1]["time"]


def test_scalars_are_mirrored_to_tensorboard(tmp_path):
    ctx = context(tmp_path)
    with MetricsWriter(ctx, single_process_env()) as writer:
        for step in range(1, 4):
            writer.log(step, loss=1.0 / step)
    events = EventAccumulator(str(ctx.tensorboard_dir))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("loss")] == [(1, 1.0), (2, 0.5), (3, 0.3333)]


def test_other_ranks_write_nothing(tmp_path):
    ctx = context(tmp_path)
    with MetricsWriter(ctx, dataclasses.replace(single_process_env(), rank=1)) as writer:
        writer.log(1, loss=1.0)
    assert not ctx.metrics_path.exists() and not ctx.tensorboard_dir.exists()


def test_appends_after_a_restart(tmp_path):
    ctx = context(tmp_path)
    for step in (1, 2):
        with MetricsWriter(ctx, single_process_env(), tensorboard=False) as writer:
            writer.log(step)
    assert [json.loads(line)["step"] for line in ctx.metrics_path.read_text().splitlines()] == [1, 2]


def test_a_resumed_run_replaces_the_lines_of_the_steps_it_redoes(tmp_path):
    ctx = context(tmp_path)
    with MetricsWriter(ctx, single_process_env(), tensorboard=False) as first_attempt:
        for step in range(1, 9):
            first_attempt.log(step, loss=1.0)
    with open(ctx.metrics_path, "a") as f:
        f.write('{"step": 9, "lo')                       # torn by a kill
    with MetricsWriter(ctx, single_process_env(), tensorboard=False) as resumed:
        resumed.resume_at(5)                             # the checkpoint it resumed from
        for step in range(6, 11):
            resumed.log(step, loss=0.5)
    lines = [json.loads(line) for line in ctx.metrics_path.read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 11))
    assert [line["loss"] for line in lines] == [1.0] * 5 + [0.5] * 5


def test_tensorboard_drops_the_redone_steps_of_an_earlier_attempt(tmp_path):
    ctx = context(tmp_path)
    with MetricsWriter(ctx, single_process_env()) as first_attempt:
        for step in range(1, 9):
            first_attempt.log(step, loss=1.0)
    with MetricsWriter(ctx, single_process_env()) as resumed:
        resumed.resume_at(5)
        for step in range(6, 11):
            resumed.log(step, loss=0.5)
    events = EventAccumulator(str(ctx.tensorboard_dir))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(s, 1.0) for s in range(1, 6)] + \
        [(s, 0.5) for s in range(6, 11)]


def test_status_shows_the_items_per_second_a_task_logs(tmp_path):
    """`status`'s progress column reads the writer's own keys: the throughput of a task's
    `items` (audio2nerf's clips, the toy's samples) as items/s, not only steps/s, and the
    loop's total steps."""
    ctx = context(tmp_path)
    with MetricsWriter(ctx, single_process_env(), tensorboard=False, total_steps=8) as writer:
        writer.log(1, items=32, loss=1.0)
        time.sleep(0.01)
        writer.log(2, items=32, loss=0.5)
    line = progress.from_rows(progress.tail_rows(ctx.metrics_path)).line()
    assert re.fullmatch(r"step 2/8 \(25%\), [0-9.e+]+ items/s, ETA 0m \d\ds, loss 0.5", line), line

"""Every run-directory path comes from launcher.layout: the writers (job processes) and the readers
(RunDir, status, the sbatch script) name the same files. No torch, no cluster."""
from __future__ import annotations

from pathlib import Path

from launcher.layout import RunLayout
from launcher.runs import RunDir
from launcher.runtime.context import TaskContext


def test_a_task_writes_where_the_launcher_reads(tmp_path):
    run = RunDir(tmp_path)
    ctx = TaskContext(run_dir=tmp_path, stage="train", config={})
    assert ctx.checkpoint_dir == run.stage("train").checkpoints == tmp_path / "stages" / "train" / "checkpoints"
    assert ctx.metrics_path == run.stage("train").metrics
    assert ctx.stage_dir == run.stage_dir("train")
    assert ctx.run_layout.processed_data == tmp_path / "data" / "processed"

    run.stage("train").latest_checkpoint.parent.mkdir(parents=True)
    run.stage("train").latest_checkpoint.write_text("step-000042\n")
    assert run.checkpoint_step("train") == 42
    ctx.metrics_path.write_text('{"step": 7}\n')
    assert run.last_metrics("train") == {"step": 7}


def test_rank_logs_have_a_shard_level_only_for_array_stages():
    stage = RunLayout(Path("/r")).stage("prep")
    assert stage.rank_log(2, None, 1) == Path("/r/stages/prep/logs/attempt-2/rank-1.log")
    assert stage.rank_log(0, 3, 0) == Path("/r/stages/prep/logs/attempt-0/shard-3/rank-0.log")

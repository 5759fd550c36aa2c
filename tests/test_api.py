"""The Python API (launcher.api) on real parts: the toy training task under real torchrun and
the local supervisor, a Slurm stage on the local cluster, and the same refusals as the CLI."""
import json
import os
import signal
import subprocess
import sys

import pytest

from launcher import api
from tests.launcher_helpers import launcher, processed_items, slurm_items_pipeline, training_spec, wait_until, write_spec

TOY = "launcher.diagnose_train:main"


def toy_spec(name: str, steps: int, **config) -> dict:
    """A one-stage toy training spec as a dict: 2 CPU ranks, a checkpoint every 5 steps."""
    return json.loads(training_spec(name, TOY, {"steps": steps, **config}, every_steps=5, restarts=2))


def steps(rows: list[dict]) -> list[int]:
    return [row["step"] for row in rows]


def test_importing_the_api_loads_neither_torch_deepspeed_nor_the_workload():
    code = ("import sys, launcher.api; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'deepspeed', 'nerffacespeech', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_spec_file_with_overrides_renders_and_validates_as_through_the_cli(tmp_path):
    spec = write_spec(tmp_path, training_spec("api-file", TOY, {"steps": 6}, every_steps=5))
    overrides = [f"run_root={tmp_path / 'runs'}", "stages.train.config.steps=9"]
    rendered = launcher("render", str(spec), *(f"--set={o}" for o in overrides), cwd=tmp_path, check=True)
    assert rendered.stdout == api.render(spec, overrides) + "\n"
    job = api.validate(spec, overrides, backend="slurm")
    assert (job.backend, job.run_root, job.stages["train"].config) == ("slurm", str(tmp_path / "runs"), {"steps": 9})


def test_a_training_run_from_a_dict_is_waited_on_cancelled_resumed_and_its_metrics_read(tmp_path):
    run = api.submit(toy_spec("api-dict", 30), overrides={"run_root": tmp_path / "runs",
                                                          "stages.train.config.sleep_per_step": 0.15})
    assert api.open_run(run.path).active()          # submit returned once the supervisor held the run
    assert "sleep_per_step: 0.15" in (run.path / "spec.yaml").read_text()
    wait_until(lambda: len(run.metrics("train")) >= 6, 90, "six training steps")
    assert list(run.jobs()) == ["train"] and run.active()          # the attempt's pid
    assert "held by the local supervisor" in run.live() and f"pid {os.getpid()} " not in run.live()
    with pytest.raises(api.WaitTimeout) as timed_out:
        run.wait(timeout=0.2)
    assert timed_out.value.states == {"train": "running"}

    elsewhere = api.open_run(run.id, run_root=tmp_path / "runs")    # as a second notebook would
    cancelled = elsewhere.cancel()
    assert cancelled.live and "cancel requested" in str(cancelled)
    assert elsewhere.wait(timeout=90) == {"train": "cancelled"}
    assert run.cancel_requested and 6 <= len(run.metrics("train")) < 30
    again = elsewhere.cancel()
    assert not again.live and str(again) == f"run {run.id} is not running (train cancelled): nothing to cancel"

    with pytest.raises(api.UnknownStage, match="nosuch"):
        run.resume(fresh_start=["nosuch"])
    with pytest.raises(api.NotResumable, match="stage resources only"):
        run.resume(overrides={"stages.train.config.steps": 40})
    lines, handler = [], signal.getsignal(signal.SIGINT)
    run.resume(detach=False, echo=lines.append,             # the supervisor in this process,
               overrides={"stages.train.resources.tasks_per_node": 1})     # on 1 rank instead of 2
    assert signal.getsignal(signal.SIGINT) is handler       # the caller's Ctrl-C is its own again
    assert "[train] attempt 1: completed -> completed (the task finished)" in lines, lines
    assert run.wait(timeout=5) == {"train": "completed"} and run.done() and not run.cancel_requested
    [stage] = run.stages
    assert (stage.name, stage.state, stage.attempts, stage.checkpoint_step) == ("train", "completed", 2, 30)
    assert stage.world_sizes == "2,1" and "tasks_per_node: 1" in (run.path / "spec.yaml").read_text()
    assert stage.job.startswith("local:") and run.jobs() == {} and run.live() is None
    rows = run.metrics("train")
    assert steps(rows) == list(range(1, 31)) and all("loss" in row for row in rows)   # each step once
    assert [a["state"] for a in run.attempts("train")] == ["cancelled", "completed"]
    assert any(p.name == "rank-1.log" for p in run.logs("train", rank=1))
    assert [r.id for r in api.runs(tmp_path / "runs")] == [run.id]


def test_bad_input_gets_the_same_refusals_as_the_cli(tmp_path):
    bad = write_spec(tmp_path, """
        name: bad name
        stages:
          train:
            task: launcher.diagnose_train:main
            resources: {tasks_per_node: zero}
    """)
    with pytest.raises(api.SpecInvalid) as from_api:
        api.validate(bad)
    cli = launcher("validate", str(bad), cwd=tmp_path)
    assert cli.returncode == 2
    assert cli.stderr.splitlines() == [str(p) for p in from_api.value.problems]
    assert f"{bad}:2: name:" in str(from_api.value)
    assert f"{bad}:6: stages.train.resources.tasks_per_node:" in str(from_api.value)

    with pytest.raises(api.SpecInvalid, match=r"nosuch\.yaml: <spec>: file not found"):
        api.submit(tmp_path / "nosuch.yaml")
    spec = toy_spec("api-bad", 4)
    spec["stages"]["train"]["resources"]["tasks_per_node"] = "two"
    with pytest.raises(api.SpecInvalid, match=r"<dict spec>: stages\.train\.resources\.tasks_per_node: must be an integer"):
        api.validate(spec)
    with pytest.raises(api.SpecInvalid, match=r"--set\[2\]: stages\.train\.array: must be a number of shards"):
        api.validate(toy_spec("api-bad", 4), overrides={"stages.train.config.steps": 2, "stages.train.array": -1})
    with pytest.raises(api.SpecInvalid, match="<dict spec>: <spec>: holds a value that is not plain YAML"):
        api.validate({**spec, "env": {"A": object()}})
    with pytest.raises(api.SpecInvalid, match="<dict spec>: include: file not found: nosuch-base.yaml"):
        api.validate({**spec, "include": "nosuch-base.yaml"})          # relative to the current directory
    with pytest.raises(FileNotFoundError, match="no run 'nosuch'"):
        api.open_run("nosuch", run_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_slurm_run_through_the_api_reports_its_jobs_and_waits_for_them(tmp_path):
    spec = slurm_items_pipeline("t-api", 6)
    run = api.submit(spec, overrides={"run_root": str(tmp_path / "runs")})
    jobs = {stage: [job.job_id for job in js] for stage, js in run.jobs().items()}   # submitit's job objects
    array = jobs["shards"][0].split("_")[0]
    assert jobs == {"shards": [f"{array}_0", f"{array}_1"], "after": [jobs["after"][0]]} and array.isdigit()
    assert run.wait(timeout=180) == {"shards": "completed", "after": "completed"}
    assert processed_items(run.path, "shards") == list(range(6))
    assert {stage: [job.job_id for job in js] for stage, js in api.open_run(run.path).jobs().items()} == jobs
    assert all(job.done() for js in run.jobs().values() for job in js)   # submitit's state, through our watcher

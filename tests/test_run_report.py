"""`launcher report RUN`: the HTML report of a real interrupted toy run (cancel + resume), opened in
headless Chromium; and the report's pure parts (checkpoint steps per attempt, ETA) on small inputs."""
import io
import json
import os
import subprocess
import sys

import pytest

from tests import headless_browser
from tests.launcher_helpers import (launcher, run_dir_from, supervisor_running, training_spec, wait_until,
                                    write_spec)

# The colours the timeline draws the two attempts in (launcher.report_plots.STATE_COLORS).
CANCELLED_GREY = (0x9e, 0x9e, 0x9e)
COMPLETED_GREEN = (0x2e, 0x7d, 0x32)


def _require(present: bool, what: str) -> None:
    """CI installs matplotlib and chromium (scripts/setup.sh test): missing there is a failure."""
    if not present:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; scripts/setup.sh test installs it")
        pytest.skip(f"{what} is missing (scripts/setup.sh test installs it)")


@pytest.fixture(scope="module")
def report_modules():
    try:
        from launcher import report, report_plots
    except ImportError as missing:
        _require(False, f"matplotlib ({missing})")
    return report, report_plots


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, report_modules):
    """A one-process toy run (no torchrun: the cheapest real run) stopped by `launcher cancel` after
    a few steps, then resumed to the end."""
    folder = tmp_path_factory.mktemp("report")
    spec = json.loads(training_spec("report", "launcher.diagnose_train:main",
                                    {"steps": 30, "sleep_per_step": 0.1}, every_steps=5))
    spec["stages"]["train"]["resources"]["tasks_per_node"] = 1
    spec = write_spec(folder, json.dumps(spec))
    run = run_dir_from(launcher("submit", str(spec), "--detach", cwd=folder, check=True).stdout)
    metrics = run / "stages/train/metrics.jsonl"
    wait_until(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 6, 90, "six steps")
    launcher("cancel", run.name, cwd=folder, check=True)
    wait_until(lambda: not supervisor_running(run), 90, "the supervisor to stop")
    launcher("resume", run.name, cwd=folder, check=True, timeout=180)
    return folder, run


@pytest.mark.slow
def test_report_of_an_interrupted_run_loads_cleanly_and_shows_the_timeline(interrupted_run, report_modules):
    _require(headless_browser.chromium() is not None, "chromium")
    from PIL import Image
    folder, run = interrupted_run
    samples = run / "stages/train/samples"
    samples.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 32), (200, 40, 40)).save(samples / "grid-000030.png")

    status = launcher("status", run.name, cwd=folder, check=True).stdout
    assert f"report {run / 'report.html'} (not written yet" in status
    result = launcher("report", run.name, cwd=folder, check=True)
    assert result.stdout.strip() == f"report {run / 'report.html'}"
    assert "(written " in launcher("status", run.name, cwd=folder, check=True).stdout
    assert not list(run.glob(".report.html.*"))          # the temporary file was renamed

    page = headless_browser.load(run / "report.html", ["img.timeline", "img.graph", "img.metrics", "img.sample"])
    assert page.errors == []
    assert page.requests[0] == (run / "report.html").as_uri()
    assert all(url.startswith("data:") for url in page.requests[1:]), page.requests
    assert all(box and box["loaded"] and box["width"] > 100 for box in page.boxes.values()), page.boxes
    timeline = page.boxes["img.timeline"]
    shot = Image.open(io.BytesIO(page.screenshot)).convert("RGB")
    region = shot.crop((int(timeline["x"]), int(timeline["y"]),
                        int(timeline["x"] + timeline["width"]), int(timeline["y"] + timeline["height"])))
    colours = {colour: count for count, colour in region.getcolors(region.width * region.height)}
    assert colours.get(CANCELLED_GREY, 0) > 500, "no bar of the cancelled first attempt in the timeline"
    assert colours.get(COMPLETED_GREEN, 0) > 500, "no bar of the completed second attempt in the timeline"


def test_each_attempt_resumes_from_the_step_the_previous_one_saved(interrupted_run, report_modules):
    report, _ = report_modules
    from launcher.runs import RunDir
    _, run = interrupted_run
    (view,) = report.collect(RunDir(run))
    first, second = view.attempts
    assert (first["state"], second["state"]) == ("cancelled", "completed")
    assert first["resumed_from"] is None and 0 < first["saved_at"] < 30
    assert second["resumed_from"] == first["saved_at"] and second["saved_at"] == 30
    assert view.eta == "done" and [step for _, step in view.commits][-1] == 30
    html = report.render(RunDir(run), [view], now=second["end"])
    assert ">cancelled by the operator<" in html and ">the task finished<" in html


def test_checkpoint_steps_follow_each_shard_separately(report_modules):
    report, _ = report_modules
    attempts = report.with_checkpoint_steps([
        {"shard": 0, "state": "continue", "checkpoint_step": 10},
        {"shard": 1, "state": "preempted", "checkpoint_step": 4},
        {"shard": 0, "state": "running", "checkpoint_step": 10},
        {"shard": 1, "state": "completed", "checkpoint_step": 9}])
    assert [(a["resumed_from"], a["saved_at"]) for a in attempts] == [(None, 10), (None, 4), (10, None), (4, 9)]


def test_a_large_array_stage_gets_one_timeline_row(report_modules):
    report, _ = report_modules
    def view(shards):
        attempts = [{"shard": s, "attempt": 0, "state": "completed"} for s in range(shards)]
        return report.StageView("prep", [], {}, attempts, [], [], None, "done")
    assert len(report._shard_rows(view(report.MAX_SHARD_ROWS))) == report.MAX_SHARD_ROWS
    assert report._shard_rows(view(report.MAX_SHARD_ROWS + 1))[0][0] == f"prep ({report.MAX_SHARD_ROWS + 1} shards)"


def test_eta_uses_the_recent_rate_and_the_total_steps(report_modules):
    report, _ = report_modules
    rows = [{"step": s, "time": s, "steps_per_s": 2.0} for s in range(1, 41)]
    assert report.eta(rows, {"steps": 160}, "running") == "1m 00s for 120 more step(s) at 2 steps/s"
    assert report.eta(rows[:-1] + [{**rows[-1], "total_steps": 40}], {}, "running").startswith("0m 00s")
    assert "once running again (state stopped)" in report.eta(rows, {"steps": 160}, "stopped")
    assert report.eta(rows, {}, "running") == "unknown (the task logs no total_steps)"
    assert report.eta([], {"steps": 9}, "pending") == "unknown (no metrics yet)"
    assert report.eta(rows, {"steps": 160}, "completed") == "done"
    assert report.eta(rows, {"steps": 160}, "3 RUNNING, 1 PENDING") == report.eta(rows, {"steps": 160}, "running")


def test_status_names_the_report_without_importing_matplotlib(interrupted_run):
    folder, run = interrupted_run
    probe = ("import sys; from launcher import cli; cli.main(['status', sys.argv[1]]); "
             "sys.exit(98 if 'matplotlib' in sys.modules else 99 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", probe, str(run)], cwd=folder, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"report {run / 'report.html'}" in result.stdout


PIPELINE = """
    name: graph
    run_root: runs
    stages:
      prep: {task: diagnose.items, array: 2}
      train: {task: diagnose.allreduce, after: [prep], config: {steps: 100}}
      evaluate: {task: diagnose.items, after: [prep]}
      publish: {task: diagnose.items, after: [train, evaluate]}
"""


def test_a_pipeline_mid_run_renders_every_stage_shard_and_state(tmp_path, report_modules):
    """A planned four-stage pipeline with ledger records as the supervisors write them (an array
    stage, a running attempt, a state the report has no colour for): every stage and shard shows."""
    report, report_plots = report_modules
    from launcher import plan as planner
    from launcher.runs import RunDir
    from launcher.spec import load_spec
    spec = load_spec(write_spec(tmp_path, PIPELINE))
    run = RunDir.create(tmp_path / "runs", spec.name)
    run.write_plan(planner.build(spec, str(run.path), sys.executable))
    now = 1_000_000.0

    def attempt(stage, shard, state, start, end, **failed):   # the fields the local supervisor writes
        run.record(stage, f"shard-{shard}-attempt-0", {**failed,
            "kind": "attempt", "stage": stage, "shard": shard, "attempt": 0, "backend": "local",
            "job_id": f"local:{100 + shard}", "nodes": "here", "start": start, "end": end, "state": state,
            "checkpoint_step": None})

    attempt("prep", 0, "completed", now - 600, now - 300)
    attempt("prep", 1, "hung", now - 600, now - 250, error="FileNotFoundError: no such clip",
            where="nerffacespeech/x.py:12 in load")
    attempt("train", 0, "running", now - 200, None)
    (run.stage_dir("train")).mkdir(parents=True)
    (run.stage_dir("train") / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "time": now - 100 + s, "steps_per_s": 1.0, "loss": 1 / s}) + "\n"
                for s in range(1, 41)) + '{"step": 41, "ti')
    views = report.collect(run)
    assert [v.name for v in views] == ["prep", "train", "evaluate", "publish"]
    assert [label for label, _ in report._shard_rows(views[0])] == ["prep[0]", "prep[1]"]
    assert views[1].eta.startswith("1m 00s for 60 more step(s)") and len(views[1].metrics) == 40
    assert report_plots.state_color("hung") == report_plots.OTHER_COLOR
    html = report.render(run, views, now=now)
    for stage in ("prep", "train", "evaluate", "publish"):
        assert f"<h2 id='stage-{stage}'>" in html
    assert html.count("<img class='metrics'") == 1 and "no attempts yet" in html
    assert "FileNotFoundError: no such clip (x.py:12 in load)" in html   # the cause, where one looks

"""The local backend through the real CLI: torchrun stages, array shards, dependencies,
restarts, and the operator commands status, logs, cancel and resume."""
import json
import os

import pytest

from tests.launcher_helpers import launcher, processed_items, run_dir_from, supervisor_running, wait_until, write_spec

PIPELINE = """
    name: pipe
    backend: local
    run_root: runs
    local: {nproc_per_node: 2, device: cpu, max_parallel: 2}
    stages:
      shards:
        task: diagnose.items
        array: 4
        config: {items: 10}
      reduce:
        task: diagnose.allreduce
        after: [shards]
        resources: {tasks_per_node: 2}
"""


def status_row(status: str, stage: str) -> list[str]:
    """The cells of `stage`'s row in `status RUN`'s table (stage, job, state, attempts, ranks, ...)."""
    return next(line.split() for line in status.splitlines() if line.split()[:1] == [stage])


def test_pipeline_runs_array_then_two_rank_allreduce(tmp_path):
    result = launcher("submit", str(write_spec(tmp_path, PIPELINE)), cwd=tmp_path, check=True)
    run = run_dir_from(result.stdout)
    assert processed_items(run, "shards") == list(range(10))
    ranks = [json.loads((run / "stages/reduce/diagnose" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["env"]["RANK"] for r in ranks] == ["0", "1"]
    assert {r["env"]["WORLD_SIZE"] for r in ranks} == {"2"}
    assert all(r["sum"] == 3.0 for r in ranks)


def test_failed_stage_stops_dependents_and_the_loop_guard_gives_up(tmp_path):
    spec = write_spec(tmp_path, """
        name: failing
        run_root: runs
        local: {max_restarts: 5}
        stages:
          shards:
            task: diagnose.items
            array: 2
            config: {items: 4, fail_shard: 1}
          after_shards:
            task: diagnose.items
            after: [shards]
    """)
    result = launcher("submit", str(spec), cwd=tmp_path)
    assert result.returncode == 1
    run = run_dir_from(result.stdout)
    assert "failed the same way twice in a row" in result.stdout
    assert not (run / "stages" / "after_shards").exists()
    status = launcher("status", str(run), cwd=tmp_path, check=True).stdout
    assert "gave-up" in status and "failed the same way twice" in status
    # the cause is where the user looks: under the supervisor's line, and in status's reason
    assert "[shards]   RuntimeError: shard 1 fails on purpose (config fail_shard)" in result.stdout
    assert "[shards]   at " in result.stdout and "launcher/diagnose.py:" in result.stdout
    assert "RuntimeError: shard 1 fails on purpose (config fail_shard) (diagnose.py:" in status
    assert status_row(status, "shards")[3] == "2"     # shard 1 ran twice, shard 0 once: not 3


def test_the_exception_of_a_failing_rank_other_than_0_is_shown(tmp_path):
    """Rank 0 finishes, rank 1 raises: the supervisor's line and status show rank 1's exception."""
    spec = write_spec(tmp_path, """
        name: rank1
        run_root: runs
        local: {max_restarts: 0}
        stages:
          work: {task: diagnose.items, resources: {tasks_per_node: 2}, config: {items: 2, fail_rank: 1}}
    """)
    result = launcher("submit", str(spec), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[work]   rank 1: RuntimeError: rank 1 fails on purpose (config fail_rank)" in result.stdout
    status = launcher("status", str(run_dir_from(result.stdout)), cwd=tmp_path, check=True).stdout
    assert "rank 1: RuntimeError: rank 1 fails on purpose (config fail_rank) (diagnose.py:" in status


def test_a_rank_that_leaves_a_non_daemon_thread_running_still_exits(tmp_path):
    """The task returns with a thread that never ends (a writer or pool left behind): the rank
    exits anyway, so the attempt ends instead of holding its job (no heartbeat watches this task)."""
    spec = write_spec(tmp_path, """
        name: lingering
        run_root: runs
        local: {max_restarts: 0}
        stages:
          work: {task: diagnose.items, config: {items: 2, leave_thread: true}}
    """)
    result = launcher("submit", str(spec), cwd=tmp_path, timeout=120, check=True)
    assert processed_items(run_dir_from(result.stdout), "work") == [0, 1]


def test_status_and_logs_show_a_finished_local_run(tmp_path):
    result = launcher("submit", str(write_spec(tmp_path, PIPELINE)), cwd=tmp_path, check=True)
    run = run_dir_from(result.stdout)
    status = launcher("status", run.name, cwd=tmp_path, check=True).stdout
    assert status.count("completed") == 2
    assert status_row(status, "shards")[3] == "1"     # 4 shards that ran once each: not "attempts 4"
    assert status_row(status, "shards")[4] == "1" and status_row(status, "reduce")[4] == "2"   # ranks
    logs = launcher("logs", run.name, "--stage", "reduce", "--rank", "1", cwd=tmp_path, check=True).stdout
    assert "reduce rank 1" in logs and "exit 0 (completed)" in logs
    nosuch = launcher("logs", run.name, "--stage", "nosuch", cwd=tmp_path)
    assert nosuch.returncode == 2 and "has no stage 'nosuch'" in nosuch.stderr and "reduce" in nosuch.stderr
    cancel = launcher("cancel", run.name, cwd=tmp_path, check=True).stdout
    assert "is not running" in cancel and "nothing to cancel" in cancel
    assert "cancel requested" not in launcher("status", run.name, cwd=tmp_path, check=True).stdout


def test_cancel_then_resume_processes_every_item_exactly_once(tmp_path):
    spec = write_spec(tmp_path, """
        name: slow
        run_root: runs
        local: {max_parallel: 2}
        stages:
          shards:
            task: diagnose.items
            array: 2
            config: {items: 30, seconds_per_item: 0.2}
    """)
    result = launcher("submit", str(spec), "--detach", cwd=tmp_path, check=True)
    run = run_dir_from(result.stdout)
    wait_until(lambda: len(processed_items(run, "shards")) >= 4, 60, "a few items")
    assert "cancel requested" in launcher("cancel", run.name, cwd=tmp_path, check=True).stdout
    wait_until(lambda: not supervisor_running(run), 60, "the supervisor to stop")
    done_before = processed_items(run, "shards")
    assert 0 < len(done_before) < 30
    assert "cancelled" in launcher("status", run.name, cwd=tmp_path, check=True).stdout
    launcher("resume", run.name, cwd=tmp_path, check=True, timeout=120)
    assert processed_items(run, "shards") == list(range(30))


def test_a_stage_stopped_by_a_signal_to_its_process_restarts_and_finishes(tmp_path):
    spec = write_spec(tmp_path, """
        name: requeue
        run_root: runs
        stages:
          shards:
            task: diagnose.items
            config: {items: 20, seconds_per_item: 0.2}
    """)
    result = launcher("submit", str(spec), "--detach", cwd=tmp_path, check=True)
    run = run_dir_from(result.stdout)
    wait_until(lambda: len(processed_items(run, "shards")) >= 3, 60, "a few items")
    attempt = json.loads((run / "ledger/shards/shard-0-attempt-0.json").read_text())
    os.kill(int(attempt["job_id"].split(":")[1]), 12)          # SIGUSR2 to the task process
    wait_until(lambda: not supervisor_running(run), 90, "the run to finish")
    assert processed_items(run, "shards") == list(range(20))
    first = json.loads((run / "ledger/shards/shard-0-attempt-0.json").read_text())
    assert first["exit_code"] == 75 and first["state"] == "continue" and first["signal"] == "SIGUSR2"


def test_hostile_values_reach_the_task_verbatim_and_run_nothing(tmp_path):
    payload = "$(touch pwned1); `touch pwned2`; touch pwned3 'quote\" \n"
    spec = write_spec(tmp_path, f"""
        name: hostile
        run_root: "runs with spaces $(touch pwned4)"
        env:
          PAYLOAD: {json.dumps(payload)}
        stages:
          reduce:
            task: diagnose.allreduce
            config: {{record_env: [PAYLOAD]}}
    """)
    result = launcher("submit", str(spec), cwd=tmp_path)
    assert result.returncode == 2 and "env.PAYLOAD: must not contain a newline" in result.stderr
    spec.write_text(spec.read_text().replace("\\n", ""))
    result = launcher("submit", str(spec), cwd=tmp_path, check=True)
    run = run_dir_from(result.stdout)
    seen = json.loads((run / "stages/reduce/diagnose/rank-0.json").read_text())["recorded_env"]
    assert seen == {"PAYLOAD": payload.replace(" \n", " ")}
    assert not list(tmp_path.rglob("pwned*"))

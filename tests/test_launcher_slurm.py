"""The Slurm backend against the real local cluster (slurm/local-cluster): multi-node
rendezvous, arrays, dependencies, operator commands, time-limit requeue, partition
preemption, and the restart cap. No sbatch/squeue/scontrol is mocked."""
import json
import subprocess
from pathlib import Path

import pytest

from tests.launcher_helpers import launcher, processed_items, run_dir_from, wait_until, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def squeue_ids(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


def attempts(run, stage):
    return [json.loads(p.read_text()) for p in sorted((run / "ledger" / stage).glob("shard-*.json"))]


def finished(run, stage, shards=1):
    done = [a for a in attempts(run, stage) if a.get("state") == "completed"]
    return len({a["shard"] for a in done}) == shards


def submit(tmp_path, text, *extra):
    result = launcher("submit", str(write_spec(tmp_path, text)), *extra, cwd=tmp_path, check=True)
    return run_dir_from(result.stdout)


def test_two_nodes_of_two_processes_rendezvous_and_allreduce(tmp_path, slurm_cluster):
    run = submit(tmp_path, """
        name: t-mn
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "5"}
        stages:
          reduce:
            task: diagnose.allreduce
            resources: {nodes: 2, tasks_per_node: 2}
    """)
    wait_until(lambda: finished(run, "reduce"), 120, "the 2-node job")
    reports = [json.loads((run / f"stages/reduce/diagnose/rank-{r}.json").read_text()) for r in range(4)]
    assert sorted(int(r["env"]["RANK"]) for r in reports) == [0, 1, 2, 3]
    assert {r["env"]["WORLD_SIZE"] for r in reports} == {"4"}
    assert len({r["env"]["MASTER_ADDR"] for r in reports}) == 1
    local_ranks = {}                     # node → local ranks there (which nodes: Slurm's choice)
    for r in reports:
        local_ranks.setdefault(r["env"]["SLURMD_NODENAME"], []).append(r["env"]["LOCAL_RANK"])
    assert len(local_ranks) == 2 and set(local_ranks) <= set(slurm_cluster.nodes), local_ranks
    assert all(sorted(ranks) == ["0", "1"] for ranks in local_ranks.values()), local_ranks
    assert all(r["sum"] == 10.0 for r in reports)


def test_an_array_of_eight_shards_processes_every_item_once_before_its_dependent(tmp_path):
    run = submit(tmp_path, """
        name: t-array
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "5", array_parallelism: 4}
        stages:
          shards:
            task: diagnose.items
            array: 8
            config: {items: 40}
          after:
            task: diagnose.items
            after: [shards]
            config: {items: 1}
    """)
    wait_until(lambda: finished(run, "after"), 180, "the dependent stage")
    assert processed_items(run, "shards") == list(range(40))
    last_shard_end = max(a["end"] for a in attempts(run, "shards"))
    assert attempts(run, "after")[0]["start"] >= last_shard_end


def test_a_dependent_stage_never_starts_when_its_dependency_fails(tmp_path):
    run = submit(tmp_path, """
        name: t-depfail
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "5", max_restarts: 0}
        stages:
          shards:
            task: diagnose.items
            array: 2
            config: {items: 4, fail_shard: 1}
          after:
            task: diagnose.items
            after: [shards]
    """)
    wait_until(lambda: not squeue_ids("t-depfail.shards") and not squeue_ids("t-depfail.after"),
               120, "both jobs to leave the queue")
    assert not attempts(run, "after")
    failed = [a for a in attempts(run, "shards") if a["shard"] == 1]
    assert failed[-1]["state"] == "gave-up"


def test_status_logs_cancel_and_resume_on_slurm(tmp_path):
    spec = """
        name: t-ops
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "10"}
        stages:
          shards:
            task: diagnose.items
            array: 2
            config: {items: 40, seconds_per_item: 0.25}
    """
    run = submit(tmp_path, spec)
    wait_until(lambda: len(processed_items(run, "shards")) >= 4, 120, "a few items")
    status = launcher("status", run.name, cwd=tmp_path, check=True).stdout
    assert "RUNNING" in status
    logs = launcher("logs", run.name, "--stage", "shards", cwd=tmp_path, check=True).stdout
    assert "[launcher.supervise] shards shard" in logs
    assert "cancelled slurm jobs" in launcher("cancel", run.name, cwd=tmp_path, check=True).stdout
    wait_until(lambda: not squeue_ids("t-ops.shards"), 60, "the job to leave the queue")
    assert len(processed_items(run, "shards")) < 40
    assert "cancel requested" in launcher("status", run.name, cwd=tmp_path, check=True).stdout
    launcher("resume", run.name, "--set", "stages.shards.resources.cpus_per_task=1", cwd=tmp_path, check=True)
    wait_until(lambda: finished(run, "shards", shards=2), 180, "the resumed run")
    assert processed_items(run, "shards") == list(range(40))
    assert "cpus_per_task: 1" in (run / "spec.yaml").read_text()         # resume --set re-planned the run
    row = next(line.split() for line in launcher("status", run.name, cwd=tmp_path, check=True).stdout.splitlines()
               if line.startswith("shards "))
    assert row[4] == "1,1"                                               # the ranks of each attempt


@pytest.mark.slow
def test_a_time_limited_job_stops_on_the_warning_signal_requeues_itself_and_finishes(tmp_path):
    run = submit(tmp_path, """
        name: t-timeout
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "2", signal_seconds: 75, max_restarts: 6}
        stages:
          work:
            task: diagnose.items
            config: {items: 90, seconds_per_item: 1.0}
    """)
    wait_until(lambda: finished(run, "work"), 420, "the job to finish across requeues")
    history = attempts(run, "work")
    assert len(history) >= 2
    assert all(a["state"] == "requeued" and a["exit_code"] == 75 for a in history[:-1])
    assert all(a["signal"] == "SIGUSR2" for a in history[:-1])
    assert "time limit near" in history[0]["reason"]
    assert [a["restart_count"] for a in history] == list(range(len(history)))
    assert processed_items(run, "work") == list(range(90))
    # The warning (USR2) reached our supervisor's handler, never submitit's checkpoint-and-requeue
    # one (which logs "Caught signal"): one layer requeued, once per attempt (restart counts above).
    logs = "".join(p.read_text() for p in (run / "stages/work/logs").glob("slurm-*.out"))
    assert "submitit" in logs and "Caught signal" not in logs


@pytest.mark.slow
def test_a_job_preempted_by_a_higher_priority_partition_is_requeued_once_and_finishes(tmp_path):
    run = submit(tmp_path, """
        name: t-preempt
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "10", extra_sbatch: ["--nodelist=node3", "--exclusive"]}
        stages:
          work:
            task: diagnose.items
            config: {items: 40, seconds_per_item: 0.5}
    """)
    wait_until(lambda: len(processed_items(run, "work")) >= 3, 120, "the job to start working")
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-w", "node3", "--exclusive",
                             "-t", "1", "--wrap", "sleep 5"], capture_output=True, text=True, check=True,
                            cwd=tmp_path)
    wait_until(lambda: finished(run, "work"), 300, "the preempted job to finish")
    history = attempts(run, "work")
    assert history[0]["state"] == "preempted" and history[0]["exit_code"] == 75
    assert history[0]["signal"] == "SIGTERM"          # no user signal at preemption: SIGTERM
    assert history[-1]["state"] == "completed" and len(history) == 2
    assert processed_items(run, "work") == list(range(40))
    assert urgent.stdout.strip()


@pytest.mark.slow
def test_a_preempted_array_task_is_requeued_alone(tmp_path):
    run = submit(tmp_path, """
        name: t-preempt-array
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "10"}
        stages:
          work:
            task: diagnose.items
            array: 2
            config: {items: 40, seconds_per_item: 0.4}
    """)
    wait_until(lambda: len(attempts(run, "work")) == 2, 120, "both array tasks to start")
    victim = next(a for a in attempts(run, "work") if a["shard"] == 0)
    node = victim["nodes"]
    subprocess.run(["sbatch", "-p", "urgent", "-w", node, "--exclusive", "-t", "1",
                    "--wrap", "sleep 5"], capture_output=True, text=True, check=True,
                            cwd=tmp_path)
    wait_until(lambda: finished(run, "work", shards=2), 300, "both array tasks to finish")
    by_shard = {s: [a for a in attempts(run, "work") if a["shard"] == s] for s in (0, 1)}
    assert [a["state"] for a in by_shard[0]] == ["preempted", "completed"]
    if by_shard[1][0]["nodes"] != node:
        assert [a["state"] for a in by_shard[1]] == ["completed"]
    assert processed_items(run, "work") == list(range(40))


def test_a_job_that_crashes_the_same_way_stops_after_the_cap_with_the_reason_in_status(tmp_path):
    run = submit(tmp_path, """
        name: t-crash
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "5", max_restarts: 5}
        stages:
          work:
            task: diagnose.items
            config: {items: 3, fail_shard: 0}
    """)
    wait_until(lambda: any(a.get("state") == "gave-up" for a in attempts(run, "work")), 180,
               "the loop guard")
    history = attempts(run, "work")
    assert [a["state"] for a in history] == ["restarted", "gave-up"]
    assert history[0]["job_id"] == history[1]["job_id"]     # the retry ran inside the same allocation
    status = launcher("status", run.name, cwd=tmp_path, check=True).stdout
    assert "failed the same way twice in a row" in status
    assert "RuntimeError: shard 0 fails on purpose (config fail_shard) (diagnose.py:" in status   # the cause


def test_a_hostile_spec_cannot_run_a_command_through_the_batch_script(tmp_path):
    payload = "$(touch pwned1); `touch pwned2`; touch pwned3 \"x\" 'y' & touch pwned4"
    spec = f"""
        name: t-hostile
        backend: slurm
        run_root: "runs with space $(touch pwned5) 'q' ;touch pwned6"
        env: {{PAYLOAD: {json.dumps(payload)}}}
        slurm: {{partition: debug, time: "5"}}
        stages:
          reduce:
            task: diagnose.allreduce
            config: {{record_env: [PAYLOAD]}}
    """
    run = submit(tmp_path, spec)
    wait_until(lambda: finished(run, "reduce"), 120, "the job")
    seen = json.loads((run / "stages/reduce/diagnose/rank-0.json").read_text())["recorded_env"]
    assert seen == {"PAYLOAD": payload}
    assert list((run / "stages/reduce/logs").glob("slurm-*.out"))
    assert not list(tmp_path.rglob("pwned*"))


def test_render_shows_exactly_the_script_that_submit_hands_to_sbatch(tmp_path):
    spec = write_spec(tmp_path, """
        name: t-render
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "5"}
        stages:
          reduce:
            task: diagnose.allreduce
            resources: {nodes: 2, tasks_per_node: 2}
    """)
    shown = launcher("render", str(spec), cwd=tmp_path, check=True).stdout
    run = submit(tmp_path, spec.read_text())
    job = json.loads(next((run / "ledger/reduce").glob("submission-*.json")).read_text())["job_id"]
    submitted = subprocess.run(["scontrol", "write", "batch_script", job, "-"], capture_output=True,
                               text=True, check=True).stdout        # what sbatch handed to Slurm
    rendered = shown.replace("t-render-RUN_ID", run.name).split("# the batch script, as submitted:\n", 1)[1]
    assert rendered == submitted + "\n"                          # + the newline print adds
    assert (run / f"stages/reduce/submitit/{job}_submission.sh").read_text() == submitted
    wait_until(lambda: finished(run, "reduce"), 120, "the job")


def hung_job(tmp_path: Path, name: str, start_budget: int, steps: int, hang_at_step: int) -> Path:
    """A 2-node diagnose.train job whose rank 1 freezes at `hang_at_step` of its first attempt
    (0: before the rendezvous), watched with a 5 s step budget; returned once it has finished."""
    run = submit(tmp_path, f"""
        name: {name}
        backend: slurm
        run_root: runs
        slurm: {{partition: debug, time: "5", max_restarts: 2}}
        stages:
          train:
            task: launcher.diagnose_train:main
            resources: {{nodes: 2, tasks_per_node: 1}}
            checkpoint: {{every_steps: 2}}
            hang_timeout: 5
            hang_timeout_start: {start_budget}
            config: {{steps: {steps}, hang_rank: 1, hang_at_step: {hang_at_step}}}
    """)
    wait_until(lambda: finished(run, "train"), 300, "the hung job to be restarted and finish")
    return run


@pytest.mark.slow
def test_a_hung_rank_is_detected_dumped_on_every_node_and_restarted_inside_the_allocation_on_slurm(tmp_path):
    run = hung_job(tmp_path, "t-hang", 120, steps=6, hang_at_step=3)
    first, second = attempts(run, "train")
    assert (first["state"], second["state"]) == ("restarted", "completed")
    assert first["job_id"] == second["job_id"]
    assert first["error"].startswith("hang: no rank made progress: rank 0 on ")
    assert {b["rank"]: b["step"] for b in first["hang"]} == {0: 2, 1: 2}
    assert first["end"] - max(b["time"] for b in first["hang"]) < 5 + 4
    # one rank on the supervisor's node, the other on another: both dumped their stacks
    assert len({b["node"] for b in first["hang"]}) == 2, first["hang"]
    assert "in freeze" in (run / "stages/train/logs/attempt-0/rank-1.log").read_text()
    assert "in agree" in (run / "stages/train/logs/attempt-0/rank-0.log").read_text()
    assert json.loads((run / "stages/train/final.json").read_text())["step"] == 6


@pytest.mark.slow
def test_a_rank_frozen_before_its_process_group_is_a_launch_hang_restarted_inside_the_allocation(tmp_path):
    """Rank 1 never reaches the rendezvous, rank 0 waits in it: no step loop yet, so the entry's
    launch heartbeat is what ages on both nodes, and the start budget is the rule."""
    run = hung_job(tmp_path, "t-launch-hang", 20, steps=4, hang_at_step=0)
    first, second = attempts(run, "train")
    assert (first["state"], second["state"]) == ("restarted", "completed")
    assert first["job_id"] == second["job_id"]
    assert {b["rank"]: b["phase"] for b in first["hang"]} == {0: "launching", 1: "launching"}
    assert first["error"].endswith("(launching, budget 20 s)"), first["error"]
    assert len({b["node"] for b in first["hang"]}) == 2, first["hang"]
    assert "in freeze" in (run / "stages/train/logs/attempt-0/rank-1.log").read_text()
    assert "in init" in (run / "stages/train/logs/attempt-0/rank-0.log").read_text()
    assert json.loads((run / "stages/train/final.json").read_text())["step"] == 4


def test_a_node_that_failed_twice_is_excluded_from_the_requeue(tmp_path, slurm_cluster):
    """A broken node: the task fails on the node of its first attempt, differently each time (so
    the loop guard does not stop it). The retry inside the allocation fails there too; the second
    failure requeues the job with that node in its ExcNodeList, and it finishes elsewhere."""
    run = submit(tmp_path, """
        name: t-exclude
        backend: slurm
        run_root: runs
        slurm: {partition: debug, time: "5", max_restarts: 3}
        stages:
          work:
            task: diagnose.items
            config: {items: 2, fail_on_first_node: true}
    """)
    wait_until(lambda: finished(run, "work"), 240, "the job to finish on another node")
    history = attempts(run, "work")
    assert [a["state"] for a in history] == ["restarted", "requeued", "completed"]
    broken = history[0]["nodes"]
    assert history[1]["nodes"] == broken and history[2]["nodes"] != broken
    assert history[1]["excluded_nodes"] == [broken]
    assert history[1]["reason"].endswith(f"excluding {broken} (failed 2+ times)")
    assert slurm_cluster.job(history[2]["job_id"])["ExcNodeList"] == broken
    assert processed_items(run, "work") == [0, 1]


def test_only_failures_of_one_node_attempts_count_towards_excluding_a_node():
    from launcher import supervise

    history = [{"nodes": "node2", "exit_code": 1}, {"nodes": "node2", "exit_code": 75},   # a stop
               {"nodes": "node[1-2]", "exit_code": 1},                                     # which node?
               {"nodes": "node2", "exit_code": 1}, {"nodes": "node3", "exit_code": 1}]
    assert supervise.failed_twice(history) == ["node2"]

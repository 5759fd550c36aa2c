"""The local Slurm cluster itself (slurm/local-cluster): what it offers and how it
behaves on requeue, preemption and signals. Real sbatch/srun/scontrol, no mocks.
These tests document the behaviour that docs/SLURM_LOCAL.md describes."""
from __future__ import annotations

import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import SlurmCluster, parse_record
# The root conftest loads tests.slurm_cluster as a plugin; importing the fixture here too
# keeps this module runnable on its own (start.sh is idempotent, so a second session
# fixture costs a fraction of a second).
from tests.slurm_cluster import slurm_cluster  # noqa: F401

pytestmark = pytest.mark.slurm

RESPONDING = {"idle", "mix", "alloc", "comp"}


def sbatch(cluster: SlurmCluster, workdir: Path, *args: str, script: str | None = None) -> str:
    """Submit with the real sbatch; return the job id."""
    cmd = ["sbatch", "--parsable", f"--chdir={workdir}", "-o", str(workdir / "slurm-%j.out"), *args]
    if script is not None:
        path = workdir / f"job-{time.monotonic_ns()}.sh"
        path.write_text("#!/bin/bash\n" + textwrap.dedent(script))
        cmd.append(str(path))
    result = cluster.run(*cmd)
    return result.stdout.strip().split(";")[0]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_file(path: Path, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, path.read_text() if path.exists() else "", re.M)
        if m:
            return m
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for /{pattern}/ in {path}:\n"
                         f"{path.read_text() if path.exists() else '(missing)'}")


def test_sinfo_shows_every_node_up_in_both_partitions(slurm_cluster):
    c = slurm_cluster
    assert c.nodes == ["node1", "node2", "node3"]
    out = c.run("sinfo", "-h", "-N", "-o", "%N %P %t %c").stdout
    rows = [line.split() for line in out.splitlines()]
    by_part: dict[str, dict[str, str]] = {}
    for node, part, state, cpus in rows:
        by_part.setdefault(part, {})[node] = state
        assert cpus == "8", f"{node} advertises {cpus} CPUs (config_overrides should give 8)"
    assert set(by_part) == {"debug*", "urgent"}, by_part       # '*': the default partition
    for part, states in by_part.items():
        assert sorted(states) == c.nodes, (part, states)
        # Idle unless other tests' jobs still run; never down/drained/not responding.
        assert set(states.values()) <= RESPONDING, (part, states)
    if not c.run("squeue", "-h").stdout.strip():
        assert set(c.node_states().values()) == {"idle"}
    parts = {p["PartitionName"]: p for p in map(
        parse_record, c.run("scontrol", "show", "partition", "-o").stdout.splitlines())}
    assert parts["debug"]["Default"] == "YES" and parts["debug"]["PreemptMode"] == "REQUEUE"
    assert parts["debug"]["GraceTime"] == "20"
    assert int(parts["urgent"]["PriorityTier"]) > int(parts["debug"]["PriorityTier"])


def test_a_two_node_job_runs_one_task_on_each_emulated_node(slurm_cluster, tmp_path):
    c = slurm_cluster
    job = sbatch(c, tmp_path, "-N2", "--ntasks-per-node=1", "--time=2", script="""
        srun bash -c 'echo "task $SLURM_PROCID $SLURMD_NODENAME $SLURM_NODELIST $SLURM_NTASKS $(hostname)"' \
            > tasks.txt
    """)
    info = c.wait_for(job, "COMPLETED", timeout=60)
    tasks = sorted(l.split() for l in lines(tmp_path / "tasks.txt"))
    assert [t[1] for t in tasks] == ["0", "1"], tasks                 # SLURM_PROCID
    assert len({t[2] for t in tasks}) == 2, tasks                     # two different nodes
    assert {t[2] for t in tasks} <= set(c.nodes)
    assert {t[3] for t in tasks} == {info["NodeList"]}                # SLURM_NODELIST
    assert {t[4] for t in tasks} == {"2"}                             # SLURM_NTASKS
    assert len({t[5] for t in tasks}) == 1                            # all one real host


def test_scontrol_requeue_from_inside_the_job_restarts_it_with_a_higher_restart_count(
        slurm_cluster, tmp_path):
    c = slurm_cluster
    job = sbatch(c, tmp_path, "--requeue", "--time=2", script="""
        echo "run ${SLURM_RESTART_COUNT:-0} $(date +%s.%N)" >> runs.txt
        if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
            scontrol requeue "$SLURM_JOB_ID"
            echo "requeue-rc $?" >> runs.txt
            sleep 120          # killed by the requeue
            echo "not killed" >> runs.txt
        fi
    """)
    info = c.wait_for(job, "COMPLETED", timeout=60)
    runs = lines(tmp_path / "runs.txt")
    assert [r.split()[:2] for r in runs if r.startswith("run")] == [["run", "0"], ["run", "1"]], runs
    assert "requeue-rc 0" in runs and "not killed" not in runs, runs
    assert info["Restarts"] == "1"
    t0, t1 = (float(r.split()[2]) for r in runs if r.startswith("run"))
    # cred_expire=10 + sched_interval=2: about 12 s (Slurm's defaults: 40-50 s).
    assert t1 - t0 < 30, f"requeue to restart took {t1 - t0:.1f}s"
    print(f"requeue-to-restart: {t1 - t0:.1f}s")


def test_urgent_job_preempts_a_debug_job_without_a_user_signal_then_it_is_requeued(
        slurm_cluster, tmp_path):
    """The common configuration (no preempt_send_user_signal): the victim's batch shell gets no
    user signal at all, only SIGTERM when GraceTime runs out (its steps get SIGTERM at once)."""
    c = slurm_cluster
    marks = tmp_path / "marks.txt"
    # The victim takes a whole node, so the urgent job can only run by preempting it.
    victim = sbatch(c, tmp_path, "-p", c.partition, "--exclusive", "--requeue", "--time=10",
                    "--signal=B:USR2@5", "-J", "t-local-victim", script=f"""
        M={marks}
        r=${{SLURM_RESTART_COUNT:-0}}
        echo "start $r $(date +%s.%N)" >> $M
        if [ "$r" != 0 ]; then echo "rerun $r" >> $M; exit 0; fi
        trap 'echo "usr2 $r $(date +%s.%N)" >> $M' USR2
        trap 'echo "term $r $(date +%s.%N)" >> $M; exit 0' TERM
        while true; do sleep 0.2; done
    """)
    info = c.wait_for(victim, "RUNNING", timeout=60)
    wait_file(marks, r"^start 0 ", 15)
    node = info["NodeList"]
    t_submit = time.time()
    urgent = sbatch(c, tmp_path, "-p", c.urgent_partition, "-w", node, "-n1", "--time=2",
                    "-J", "t-local-urgent", "--wrap", "sleep 1")
    try:
        # During GraceTime the job still RUNs, with PreemptTime set and EndTime moved in.
        during = wait_until_preempted(c, victim)
        assert during["JobState"] == "RUNNING" and during["Restarts"] == "0", during
        term = float(wait_file(marks, r"^term 0 (\S+)", 40).group(1))
        assert 15 <= term - t_submit <= 30, f"SIGTERM {term - t_submit:.1f}s after the urgent submit"
        c.wait_for(urgent, "COMPLETED", timeout=60)
        final = c.wait_for(victim, "COMPLETED", timeout=60)
    finally:
        c.cancel(victim, urgent)
    assert "rerun 1" in lines(marks)
    assert final["Restarts"] == "1"
    assert not any(line.startswith("usr2") for line in lines(marks)), "no user signal at preemption"
    history = [r["JobState"] for r in c.completions(victim)]
    assert history == ["PREEMPTED", "COMPLETED"], history
    print(f"preemption: SIGTERM to the batch shell {term - t_submit:.1f}s after the urgent submit")


def wait_until_preempted(c, job, timeout: float = 15) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = c.job(job)
        if info.get("PreemptTime", "None") != "None":
            return info
        time.sleep(0.2)
    raise AssertionError(f"job {job} was not preempted within {timeout}s")


def test_scancel_signal_reaches_step_processes_and_batch_flag_only_the_batch_shell(
        slurm_cluster, tmp_path):
    """scancel --signal=USR2 (no --batch): every process of every srun step, grandchildren
    included, but not the batch shell. --batch: the batch shell only (not its children).
    And srun forwards a SIGUSR2 it receives to its tasks."""
    c = slurm_cluster
    log = tmp_path / "sig.log"
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import signal, sys, time
        role = sys.argv[1]
        def h(n, f):
            open({str(log)!r}, "a").write(f"{{role}} USR2\\n")
        signal.signal(signal.SIGUSR2, h)
        open({str(log)!r}, "a").write(f"{{role}} ready\\n")
        while True:
            time.sleep(0.2)
    """))
    script = f"""
        L={log}
        trap 'echo "batch USR2" >> $L' USR2
        python3 {child} batchchild &
        # The task shell must survive SIGUSR2 (default action: terminate); if it died, the
        # grandchild would be orphaned to PID 1 and escape proctrack/linuxproc's cleanup.
        srun -n1 --exact --mem=200 bash -c 'trap : USR2; python3 {child} grandchild & C=$!
            while kill -0 $C 2>/dev/null; do wait $C; done' &
        srun -n1 --exact --mem=200 python3 {child} task &
        while true; do sleep 0.2; done
    """
    ids = [sbatch(c, tmp_path, "-n2", "--time=2", "-J", f"t-local-sig-{k}", script=script)
           for k in ("plain", "batch")]
    try:
        deadline = time.monotonic() + 45
        while lines(log).count("task ready") + lines(log).count("grandchild ready") < 4:
            assert time.monotonic() < deadline, lines(log)
            time.sleep(0.2)
        log.write_text("")
        c.run("scancel", "--signal=USR2", ids[0])
        time.sleep(2)
        plain = sorted(set(lines(log)))
        log.write_text("")
        c.run("scancel", "--signal=USR2", "--batch", ids[1])
        time.sleep(2)
        batch_only = sorted(set(lines(log)))
    finally:
        c.cancel(*ids)
    assert plain == ["grandchild USR2", "task USR2"], plain
    assert batch_only == ["batch USR2"], batch_only


def test_srun_forwards_sigusr2_to_its_tasks(slurm_cluster, tmp_path):
    c = slurm_cluster
    log = tmp_path / "fwd.log"
    job = sbatch(c, tmp_path, "-n1", "--time=2", script=f"""
        srun bash -c 'trap "echo task-USR2 >> {log}" USR2; echo ready >> {log}; while true; do sleep 0.2; done' &
        S=$!
        while ! grep -q ready {log} 2>/dev/null; do sleep 0.2; done
        kill -USR2 $S
        sleep 2
        kill -TERM $S
        wait
    """)
    c.wait_for(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
    assert "task-USR2" in lines(log), lines(log)


def test_requeue_of_one_array_task_reruns_only_that_task(slurm_cluster, tmp_path):
    c = slurm_cluster
    runs = tmp_path / "runs.txt"
    job = sbatch(c, tmp_path, "--array=0-2", "--requeue", "--time=2", script=f"""
        echo "$SLURM_ARRAY_TASK_ID ${{SLURM_RESTART_COUNT:-0}}" >> {runs}
        sleep 6
    """)
    deadline = time.monotonic() + 45
    while len(lines(runs)) < 3:
        assert time.monotonic() < deadline, lines(runs)
        time.sleep(0.2)
    c.run("scontrol", "requeue", f"{job}_1")
    c.wait_for_array(job, "COMPLETED", timeout=60)
    assert sorted(lines(runs)) == ["0 0", "1 0", "1 1", "2 0"], lines(runs)


def test_sacct_reads_job_completion_records_without_slurmdbd(slurm_cluster, tmp_path):
    c = slurm_cluster
    job = sbatch(c, tmp_path, "--time=1", "--wrap", "exit 3")
    c.wait_for(job, "FAILED", timeout=60)
    out = c.run("sacct", "-c", "-n", "-j", job, "-o", "JobID,State,ExitCode").stdout
    assert re.search(rf"^\s*{job}\s+FAILED\s+3:0", out, re.M), out
    assert c.completions(job)[-1]["JobState"] == "FAILED"
    plain = subprocess.run(["sacct", "-n", "-j", job, "-o", "JobID,State"], capture_output=True,
                           text=True, env=c.env)
    config = c.run("scontrol", "show", "config").stdout
    if "accounting_storage/slurmdbd" in config:          # start.sh --with-accounting
        assert re.search(rf"^\s*{job}\s+FAILED", plain.stdout, re.M), plain
    else:
        # Without slurmdbd plain sacct has nothing to read: exit 1, "accounting storage is disabled".
        assert plain.returncode != 0 and "accounting storage is disabled" in plain.stderr, plain

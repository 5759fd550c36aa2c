"""The seams between submitit and our Slurm supervisor: who handles the signals in the batch
step, and how job states are read when accounting is off (squeue) and on (sacct, on a private
cluster with slurmdbd)."""
import json
import logging
import subprocess
import sys

import pytest

from launcher import api
from launcher.backends.slurm import QueueWatcher, StageJob
from tests.launcher_helpers import launcher, processed_items, slurm_items_pipeline, wait_until

# In a fresh interpreter (signal handlers are process-wide): install submitit's batch-step
# handlers exactly as submitit.core._submit does, then start our supervisor's step runner.
HANDLERS = r"""
import json, signal, sys
from submitit.core import utils
from submitit.slurm.slurm import SlurmJobEnvironment
from launcher.supervise import StepRunner

def owner(signum):
    handler = signal.getsignal(signum)
    if handler in (signal.SIG_DFL, signal.SIG_IGN):
        return handler.name
    return type(getattr(handler, "__self__", None)).__name__ + "." + handler.__name__

SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGCONT", "SIGINT")
SlurmJobEnvironment()._handle_signals(utils.JobPaths(sys.argv[1], job_id="1"),
                                      utils.DelayedSubmission(print))
before = {name: owner(getattr(signal, name)) for name in SIGNALS}
StepRunner(sys.argv[2].split(","))
print(json.dumps({"before": before, "after": {name: owner(getattr(signal, name)) for name in SIGNALS}}))
"""


def handlers(tmp_path, stop_signals: str) -> dict:
    out = subprocess.run([sys.executable, "-c", HANDLERS, str(tmp_path), stop_signals],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_the_supervisor_switches_off_submitits_checkpoint_and_requeue_handler(tmp_path):
    seen = handlers(tmp_path, "USR1,TERM,INT")      # a spec whose warning signal is USR1
    assert seen["before"]["SIGUSR2"] == "SignalHandler.checkpoint_and_try_requeue"
    assert seen["before"]["SIGTERM"] == "SignalHandler.bypass"
    ours = "StepRunner._on_signal"
    assert [seen["after"][s] for s in ("SIGUSR1", "SIGTERM", "SIGINT")] == [ours] * 3
    assert seen["after"]["SIGUSR2"] == seen["after"]["SIGCONT"] == "SIG_DFL"


def test_with_the_default_warning_signal_usr2_goes_to_the_supervisor(tmp_path):
    assert handlers(tmp_path, "USR2,TERM,INT")["after"]["SIGUSR2"] == "StepRunner._on_signal"


def test_job_states_without_accounting_come_from_one_squeue_call_per_update():
    watcher = QueueWatcher()
    watcher._use_sacct = False              # what accounting_enabled() finds on such a cluster
    for job in ("41", "42_0", "42_1", "42_2"):
        watcher.register_job(job)
    command = watcher._make_command()
    assert command[:4] == ["squeue", "--array", "-o", "%i|%T|%N"] and command[-1] == "41,42"
    info = watcher.read_info("JOBID|STATE|NODELIST\n41|RUNNING|node1\n42_0|RUNNING|node2\n"
                             "42_[1-2%2]|PENDING|\n")
    assert {job: info[job]["State"] for job in ("41", "42_0", "42_1", "42_2")} == {
        "41": "RUNNING", "42_0": "RUNNING", "42_1": "PENDING", "42_2": "PENDING"}


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_jobs_gone_from_the_queue_read_as_unknown_without_a_warning(caplog):
    watcher = QueueWatcher()
    watcher._use_sacct = False
    watcher.register_job("987654321")                # squeue: "Invalid job id specified", exit 1
    with caplog.at_level(logging.WARNING, logger="submitit"):
        watcher.update()
    assert watcher.num_calls == 1 and watcher.get_state("987654321", mode="cache") == "UNKNOWN"
    assert not caplog.records


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_job_seen_queued_then_gone_no_longer_reads_as_queued(tmp_path):
    """squeue forgets a job once it ends: the state cached while it was queued must not stay."""
    held = subprocess.run(["sbatch", "--parsable", "--hold", "-p", "debug", f"--output={tmp_path}/%j.out",
                           "--wrap", "true"], capture_output=True, text=True, check=True).stdout.strip()
    watcher = QueueWatcher()
    watcher._use_sacct = False
    watcher.register_job(held)
    watcher.update()
    assert watcher.get_state(held, mode="cache") == "PENDING"
    subprocess.run(["scancel", held], check=True)
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", held], capture_output=True, text=True).stdout.strip(),
               30, "the job to leave the queue")
    watcher.update()
    assert watcher.get_state(held, mode="cache") == "UNKNOWN" and watcher.num_calls == 2
    watcher.update()
    assert watcher.num_calls == 2                   # a job gone for good is not asked for again


def watcher_of(job_ids: list[str], use_sacct: bool) -> QueueWatcher:
    """A fresh watcher with these jobs registered, told which source to ask."""
    watcher = QueueWatcher()
    watcher._use_sacct = use_sacct
    for job in job_ids:
        watcher.register_job(job)
    return watcher


@pytest.mark.slurm
def test_with_accounting_states_come_from_sacct_also_after_the_jobs_left_the_queue(
        slurm_cluster_with_accounting, monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CONF", slurm_cluster_with_accounting.env["SLURM_CONF"])
    monkeypatch.setattr(StageJob, "watcher", QueueWatcher())    # decides sacct/squeue afresh, here
    spec = slurm_items_pipeline("t-acct", 4)
    run = api.submit(spec, overrides={"run_root": str(tmp_path / "runs")})
    assert run.wait(timeout=180, poll=1) == {"shards": "completed", "after": "completed"}
    assert StageJob.watcher._use_sacct is True and StageJob.watcher.num_calls >= 1
    assert processed_items(run.path, "shards") == list(range(4))
    tasks = [job.job_id for js in run.jobs().values() for job in js]    # submitit's job objects
    shards, after = (tasks[0].split("_")[0], tasks[2])
    assert tasks == [f"{shards}_0", f"{shards}_1", after]
    status = launcher("status", str(run.path), cwd=tmp_path, check=True).stdout
    assert [line.split()[:3] for line in status.splitlines() if line.split()[:1] in (["shards"], ["after"])] \
        == [["shards", shards, "completed"], ["after", after, "completed"]], status

    # The jobs ended: squeue no longer lists them, so without accounting their states are lost ...
    wait_until(lambda: not slurm_cluster_with_accounting.run("squeue", "-h", "-j", f"{shards},{after}").stdout,
               30, "the ended jobs to leave squeue")
    queue = watcher_of(tasks, use_sacct=False)
    queue.update()
    assert [queue.get_state(t, mode="cache") for t in tasks] == ["UNKNOWN"] * 3
    # ... and with it, one sacct call for them all reads them back from the accounting database,
    accounting = watcher_of(tasks, use_sacct=True)
    assert accounting._make_command()[:4] == ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    accounting.update()
    assert accounting.num_calls == 1
    assert [accounting.get_state(t, mode="cache") for t in tasks] == ["COMPLETED"] * 3
    # as submitit's job objects of the run read them (through the backend's watcher: sacct).
    assert [job.state for js in run.jobs().values() for job in js] == ["COMPLETED"] * 3

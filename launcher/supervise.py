"""`python -m launcher.supervise RUN STAGE -- STEP...`: the batch step of every Slurm job.

It records the attempt in the ledger, fills in the rendezvous endpoint, runs the srun step,
and then decides once (policy.py) whether to requeue. It is the only layer that requeues:
never when Slurm is already requeueing a preempted job, never after `launcher cancel`, never
when the cap or the loop guard says stop.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

from . import exitcodes, plan as planner, policy, runlock, signals
from .runs import RunDir

PORT_RANGE = (20000, 60000)
STAGE_LOCK_WAIT_SECONDS = 300


def scontrol(*args: str) -> str:
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""       # e.g. scontrol missing inside a container


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict (empty when scontrol is unavailable)."""
    return dict(re.findall(r"(\w+)=(\S*)", scontrol("show", "job", "-o", job_id)))


def head_node_address(nodelist: str) -> str:
    """The first node's NodeAddr as Slurm knows it (not a DNS guess)."""
    hosts = scontrol("show", "hostnames", nodelist).split()
    head = hosts[0] if hosts else socket.gethostname()
    fields = dict(re.findall(r"(\w+)=(\S*)", scontrol("show", "node", "-o", head)))
    return fields.get("NodeAddr") or head


def free_port(job_id: str) -> int:
    """A port derived from the job id (distinct for jobs sharing a node), probed to be free."""
    low, high = PORT_RANGE
    start = low + zlib.crc32(job_id.encode()) % (high - low)
    for offset in range(200):
        port = low + (start - low + offset) % (high - low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port for the rendezvous")


def this_job_id() -> str:
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID", "?")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run_dir, stage_name, sep, *step = args
    assert sep == "--", "usage: python -m launcher.supervise RUN STAGE -- STEP..."
    run = RunDir(Path(run_dir))
    stage = next(s for s in run.read_plan()["stages"] if s["name"] == stage_name)
    shard = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    job_id = this_job_id()
    step_runner = StepRunner(stage["stop_signals"])
    lock = runlock.RunLock(run.stage(stage_name).shard_lock(shard),
                           f"an attempt of stage {stage_name} shard {shard}")
    try:        # a requeued job can start while the step of its previous run is still ending
        lock.acquire(wait_s=STAGE_LOCK_WAIT_SECONDS)
    except runlock.LockHeld as held:
        print(f"[launcher.supervise] not started: {held}", flush=True)
        return exitcodes.FAILED
    for lost in run.settle_lost_attempts(stage_name, shard):
        print(f"[launcher.supervise] attempt {lost['attempt']} (job {lost['job_id']}): {lost['reason']}",
              flush=True)
    attempt = len(run.attempts(stage_name, shard))

    endpoint = f"{head_node_address(os.environ.get('SLURM_JOB_NODELIST', ''))}:{free_port(job_id)}"
    step = [w.replace(planner.RDZV_PLACEHOLDER, endpoint) for w in step]
    os.environ.update({"NFS_ATTEMPT": str(attempt), "NFS_RANK_LOGS": "1", "PYTHONUNBUFFERED": "1",
                       "NFS_SHARD_INDEX": str(shard)})
    key = f"shard-{shard}-attempt-{attempt}"
    record = {"kind": "attempt", "stage": stage_name, "shard": shard, "attempt": attempt,
              "backend": "slurm", "job_id": job_id, "nodes": os.environ.get("SLURM_JOB_NODELIST"),
              "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
              "start": time.time(), "end": None, "state": "running",
              "checkpoint_step": run.checkpoint_step(stage_name), "step_command": step}
    run.record(stage_name, key, record)
    print(f"[launcher.supervise] {stage_name} shard {shard} attempt {attempt} job {job_id}: "
          f"{' '.join(step)}", flush=True)

    code = step_runner.run(step)
    outcome = run.read_outcome(stage_name, shard, attempt) or {}
    exit_code = outcome.get("exit", code)
    if exit_code == exitcodes.OK and code != 0:
        exit_code = code
    previous = run.attempts(stage_name, shard)[-2:-1]
    step_done = run.checkpoint_step(stage_name)
    decision = policy.decide(
        exit_code, error=outcome.get("error"), checkpoint_step=step_done, restarts_used=attempt,
        max_restarts=stage["max_restarts"], previous=previous[0] if previous else None,
        cancel_requested=run.cancel_requested, operator_stop=False)
    fields = job_fields(job_id)
    reason = decision.reason
    action = decision.action
    if action == policy.CONTINUE:
        action, reason = _requeue(job_id, fields, reason, stopped=exit_code == exitcodes.STOPPED_FOR_REQUEUE)
    record.update(end=time.time(), exit_code=exit_code, outcome=exitcodes.describe(exit_code),
                  error=outcome.get("error"), signal=outcome.get("signal"),
                  checkpoint_step=step_done, state=action, reason=reason,
                  sigterm_seen=bool(step_runner.signalled))
    problem = run.try_record(stage_name, key, record)
    for line in ([problem] if problem else []) + run.quarantined_since(stage_name, record["start"]):
        print(f"[launcher.supervise] {line}", flush=True)
    error = f": {outcome['error']}" if outcome.get("error") else ""
    print(f"[launcher.supervise] {exitcodes.describe(exit_code)}{error} -> {action}: {reason}", flush=True)
    return exitcodes.OK if action == policy.COMPLETED else (
        exitcodes.STOPPED_FOR_REQUEUE if action in ("requeued", "preempted") else exitcodes.FAILED)


class StepRunner:
    """Runs the step, passing on the stop signals this supervisor receives.

    Across nodes the step is `srun`, and Slurm signals its processes itself. On one node the
    step runs here, in the batch step (launcher.plan says why), and two things keep the signals
    flowing: every stop signal this process gets is passed to the step's whole process tree,
    and a relay step (launcher.relay) brings the signals Slurm sends to steps only.
    """

    def __init__(self, stop_signals: list[str]):
        self.stop_signals = stop_signals
        self.signalled: list[tuple[float, int]] = []
        self.process: subprocess.Popen | None = None
        for name in stop_signals:
            signal.signal(signals.number(name), self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled.append((time.time(), signum))
        if self.process is not None and self.process.returncode is None:
            runlock.signal_tree(self.process.pid, signum)

    def run(self, step: list[str]) -> int:
        self.process = subprocess.Popen(step)
        relay = None if step[0] == "srun" else self._start_relay()
        try:
            return self.process.wait()
        finally:
            if relay is not None:
                relay.terminate()           # srun ends the relay step; not waited for: when Slurm
                                            # is ending the job, the record must be written first

    def _start_relay(self) -> subprocess.Popen:
        return subprocess.Popen(["srun", "--nodes=1", "--ntasks=1", "--overlap", "--cpus-per-task=1",
                                 "--kill-on-bad-exit=0", "--quiet", sys.executable, "-m", "launcher.relay",
                                 str(os.getpid()), ",".join(self.stop_signals)], stdin=subprocess.DEVNULL)


def _requeue(job_id: str, fields: dict[str, str], why: str, stopped: bool) -> tuple[str, str]:
    """Requeue this job (only this array task) unless Slurm is already doing it.

    A preempted job that stops within its GraceTime ends on its own, and Slurm then treats it as
    finished, so the supervisor requeues it; only when the grace ran out and Slurm killed the
    step is Slurm's own requeue under way (state REQUEUE*/PREEMPTED), and nothing is added.
    `scontrol requeue` by an operator shows as COMPLETING with `Restarts` already above this
    run's SLURM_RESTART_COUNT: it reruns, nothing is added. `stopped`: the step stopped on a
    stop request (rather than failing and being retried).
    """
    state = fields.get("JobState", "")
    preempted = fields.get("PreemptTime", "None") not in ("None", "Unknown", "")
    if "REQUEUE" in state or "PREEMPT" in state:
        return "preempted", f"preempted; Slurm requeues it ({why})"
    restarts, own = fields.get("Restarts", ""), os.environ.get("SLURM_RESTART_COUNT", "0") or "0"
    if state == "COMPLETING" and restarts.isdigit() and own.isdigit() and int(restarts) > int(own):
        return "requeued", f"requeued by scontrol requeue; Slurm reruns it ({why})"
    if state in ("CANCELLED", "COMPLETING"):
        return policy.CANCELLED, f"Slurm is ending the job ({state}); not requeued ({why})"
    end = fields.get("EndTime", "")
    near_limit = False
    try:
        near_limit = time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S")) - time.time() < 600
    except ValueError:
        pass
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if preempted:
        return "preempted", f"preempted; requeued ({why})" if result.returncode == 0 else (
            f"preempted; Slurm requeues it ({why})")
    if result.returncode != 0:
        return policy.GAVE_UP, f"could not requeue: {result.stderr.strip() or 'scontrol failed'}"
    return "requeued", (("time limit near; " if near_limit else "stop signal; ") if stopped else "") + why


if __name__ == "__main__":
    sys.exit(main())

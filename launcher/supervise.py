"""The supervisor of every Slurm job: submitit's batch step calls `attempt(RUN, STAGE)`.

It takes the stop signals from submitit's handlers, records the attempt in the ledger, fills in
the rendezvous endpoint, runs the stage's step, and then decides once (attempts.finish_attempt)
what follows. A failure (not a stop) is retried at once inside the allocation, as a new attempt
and a new step, while time is left; a stop, or a failure with little time left, requeues. It is
the only layer that restarts or requeues: never when Slurm is already requeueing a preempted job,
never after `launcher cancel`, never when the cap or the loop guard says stop.
"""
from __future__ import annotations

import collections
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

from . import attempts, exitcodes, heartbeat, plan as planner, policy, runlock, signals
from .runs import RunDir

PORT_RANGE = (20000, 60000)
# The signals submitit's batch step (`submitit.core._submit`) handles: USR2 checkpoints and
# requeues, TERM and CONT are logged. Back to their defaults before ours are installed.
SUBMITIT_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGCONT)
STAGE_LOCK_WAIT_SECONDS = 300
RESTARTED = "restarted"             # a failed attempt retried at once inside the same allocation
IN_ALLOCATION_MIN_SECONDS = 120     # less left than this: requeue instead (a fresh time limit)
FAILURES_TO_EXCLUDE = 2             # a node that failed this often is excluded from the requeue


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


def quote_step(step: list[str]) -> list[str]:
    """The step's words shell-quoted, as `render` shows them."""
    return [shlex.quote(word) for word in step]


def attempt(run_dir: str, stage_name: str) -> int:
    """Run one attempt of `stage_name` in this Slurm job (submitit's batch step calls it).

    Raises SystemExit with a non-zero code when the job must not count as a success (so an
    `afterok` dependent never starts after a failure); returns 0 when the stage finished.
    """
    plan = planner.load(run_dir)
    stage = plan.stage(stage_name)
    step_runner = StepRunner(stage.stop_signals)     # first: submitit's handlers go
    code = _supervise(RunDir(Path(run_dir)), stage, step_runner)
    if code != exitcodes.OK:
        raise SystemExit(code)
    return code


def _supervise(run: RunDir, stage: planner.StagePlan, step_runner: "StepRunner") -> int:
    shard = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    job_id = this_job_id()
    os.environ.update(stage.env)
    lock = runlock.RunLock(run.stage(stage.name).shard_lock(shard),
                           f"an attempt of stage {stage.name} shard {shard}")
    try:        # a requeued job can start while the step of its previous run is still ending
        lock.acquire(wait_s=STAGE_LOCK_WAIT_SECONDS)
    except runlock.LockHeld as held:
        print(f"[launcher.supervise] not started: {held}", flush=True)
        return exitcodes.FAILED
    for lost in run.settle_lost_attempts(stage.name, shard):
        print(f"[launcher.supervise] attempt {lost['attempt']} (job {lost['job_id']}): {lost['reason']}",
              flush=True)
    while True:
        decision = _run_attempt(run, stage, shard, job_id, step_runner)
        if decision.action != RESTARTED:
            break
    return exitcodes.OK if decision.action == policy.COMPLETED else (
        exitcodes.STOPPED_FOR_REQUEUE if decision.action in ("requeued", "preempted") else exitcodes.FAILED)


def _run_attempt(run: RunDir, stage: planner.StagePlan, shard: int, job_id: str,
                 step_runner: "StepRunner") -> policy.Decision:
    """One attempt in this allocation: record it, run the step, decide what follows."""
    number = len(run.attempts(stage.name, shard))
    endpoint = f"{head_node_address(os.environ.get('SLURM_JOB_NODELIST', ''))}:{free_port(f'{job_id}.{number}')}"
    step = [w.replace(planner.RDZV_PLACEHOLDER, endpoint)
             .replace("$SLURM_JOB_ID", os.environ.get("SLURM_JOB_ID", "0")) for w in stage.command]
    os.environ.update({"NFS_ATTEMPT": str(number), "NFS_RANK_LOGS": "1", "PYTHONUNBUFFERED": "1",
                       "NFS_SHARD_INDEX": str(shard)})
    record = attempts.AttemptRecord(
        stage=stage.name, shard=shard, attempt=number, backend="slurm", job_id=job_id,
        nodes=os.environ.get("SLURM_JOB_NODELIST"), start=time.time(),
        checkpoint_step=run.checkpoint_step(stage.name), world_size=stage.world_size,
        extra={"restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")), "step_command": step})
    record.write(run)
    print(f"[launcher.supervise] {stage.name} shard {shard} attempt {number} job {job_id}: "
          f"{' '.join(step)}", flush=True)

    signals_before = len(step_runner.signalled)     # an allocation may run several attempts
    code = step_runner.run(step, heartbeat.HangWatch(run.stage(stage.name).heartbeats(shard, number), stage.hang))
    record.extra["sigterm_seen"] = len(step_runner.signalled) > signals_before
    if step_runner.hang is not None:
        record.extra["hang"] = step_runner.hang.ranks

    def restart_here_or_requeue(decision: policy.Decision, stopped: bool) -> tuple[str, str]:
        fields = job_fields(job_id)
        history = [r for r in run.attempts(stage.name, shard) if r.get("attempt") != number]
        if not stopped:
            history.append({"nodes": record.nodes, "exit_code": exitcodes.FAILED})
        exclude = failed_twice(history)
        if stage.restart_in_allocation and not stopped and not step_runner.signalled \
                and _seconds_left(fields) > IN_ALLOCATION_MIN_SECONDS and record.nodes not in exclude:
            return RESTARTED, f"restarted inside the allocation ({decision.reason})"
        if exclude:
            record.extra["excluded_nodes"] = exclude
        return _requeue(job_id, fields, decision.reason, stopped=stopped, exclude=exclude)

    return attempts.finish_attempt(
        run, stage, record, code, end=time.time(), on_continue=restart_here_or_requeue,
        failure=step_runner.hang.describe() if step_runner.hang else None,
        echo=lambda line: print(f"[launcher.supervise] {line}", flush=True))


def _seconds_left(fields: dict[str, str]) -> float:
    """Seconds until the allocation's EndTime (infinite without a limit or without scontrol)."""
    try:
        return time.mktime(time.strptime(fields.get("EndTime", ""), "%Y-%m-%dT%H:%M:%S")) - time.time()
    except ValueError:
        return float("inf")


class StepRunner:
    """Runs the step, passing on the stop signals this supervisor receives.

    Across nodes the step is `srun`, and Slurm signals its processes itself. On one node the
    step runs here, in the batch step (launcher.plan says why), and two things keep the signals
    flowing: every stop signal this process gets is passed to the step's whole process tree,
    and a relay step (launcher.relay) brings the signals Slurm sends to steps only. While the
    step runs, the hang watch reads the ranks' heartbeats (launcher.heartbeat): on a hang every
    rank dumps its stack (on other nodes through `signal_on_node`) and the step is killed, on
    every node (`kill_job_steps`).
    """

    def __init__(self, stop_signals: list[str]):
        self.stop_signals = stop_signals
        self.signalled: list[tuple[float, int]] = []
        self.process: subprocess.Popen | None = None
        self.hang: heartbeat.Hang | None = None
        for signum in SUBMITIT_SIGNALS:     # submitit's checkpoint-and-requeue handler goes
            signal.signal(signum, signal.SIG_DFL)
        for name in stop_signals:
            signal.signal(signals.number(name), self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled.append((time.time(), signum))
        if self.process is not None and self.process.returncode is None:
            runlock.signal_tree(self.process.pid, signum)

    def run(self, step: list[str], watch: heartbeat.HangWatch) -> int:
        self.hang = None                    # of this step (an allocation may run several)
        self.process = subprocess.Popen(step)
        relay = None if step[0] == "srun" else self._start_relay()
        try:
            while True:
                try:
                    return self.process.wait(timeout=watch.every_s)
                except subprocess.TimeoutExpired:
                    pass
                if self.hang is None:
                    self.hang = watch.check()
                    if self.hang is not None:
                        print(f"[launcher.supervise] {self.hang.describe()}: dumping stacks, ending the step",
                              flush=True)
                        heartbeat.dump_stacks(self.hang, remote=signal_on_node)
                        if step[0] == "srun":
                            kill_job_steps()
                        runlock.signal_tree(self.process.pid, signal.SIGKILL)
        finally:
            if relay is not None:
                relay.terminate()           # srun ends the relay step; not waited for: when Slurm
                                            # is ending the job, the record must be written first

    def _start_relay(self) -> subprocess.Popen:
        return subprocess.Popen(["srun", "--nodes=1", "--ntasks=1", "--overlap", "--cpus-per-task=1",
                                 "--kill-on-bad-exit=0", "--quiet", sys.executable, "-m", "launcher.relay",
                                 str(os.getpid()), ",".join(self.stop_signals)], stdin=subprocess.DEVNULL)


def one_node(nodes: str | None) -> str | None:
    """The node of a one-node Slurm node list ("node3"), else None ("node[1-2]", "a,b", none)."""
    return nodes if nodes and not set("[,") & set(nodes) else None


def failed_twice(attempts: list[dict]) -> list[str]:
    """The nodes on which at least FAILURES_TO_EXCLUDE failed attempts ran. Only one-node attempts
    count: of several nodes the ledger cannot tell which one failed, and excluding them all could
    leave the job nowhere to run."""
    counts = collections.Counter(
        a["nodes"] for a in attempts
        if one_node(a.get("nodes"))
        and a.get("exit_code") not in (None, exitcodes.OK, exitcodes.STOPPED_FOR_REQUEUE))
    return sorted(node for node, failures in counts.items() if failures >= FAILURES_TO_EXCLUDE)


def _exclude_nodes(job_id: str, fields: dict[str, str], nodes: list[str]) -> str:
    """Add `nodes` to the requeued job's ExcNodeList; the reason's words. Slurm takes it only once
    the job is no longer running, i.e. after `scontrol requeue`, which also sends SIGTERM to every
    process of the job: the update runs deaf to it (killed by it, it failed in the real flow)."""
    before = fields.get("ExcNodeList", "(null)")
    merged = ",".join(([] if before in ("(null)", "") else [before]) + nodes)
    result = subprocess.run(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={merged}"],
                            capture_output=True, text=True, preexec_fn=lambda: signals.ignore(["TERM"]))
    if result.returncode != 0:
        return f"; could not exclude {','.join(nodes)}: {result.stderr.strip() or 'scontrol failed'}"
    return f"; excluding {','.join(nodes)} (failed {FAILURES_TO_EXCLUDE}+ times)"


def signal_on_node(node: str, pids: list[int]) -> None:
    """Send the stack-dump signal to `pids` on another node of this allocation, through a
    one-task step there (`--overlap`: the hung step keeps its resources)."""
    try:
        subprocess.run(["srun", f"--jobid={os.environ.get('SLURM_JOB_ID', '')}", "--overlap", "--nodes=1",
                        "--ntasks=1", "--cpus-per-task=1", "--mem=0", f"--nodelist={node}", "--quiet",
                        "kill", f"-{heartbeat.DUMP_SIGNAL}",
                        *map(str, pids)], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pass            # the dump is a help; ending the step must not wait on it


def kill_job_steps() -> None:
    """SIGKILL the processes of every numbered step of this job on all its nodes (not the batch
    step, where this supervisor runs): a killed srun client leaves its tasks on the other nodes
    running, and they would hold the nodes the next attempt's step needs."""
    job = os.environ.get("SLURM_JOB_ID", "")
    try:
        listed = subprocess.run(["squeue", "-h", "-s", "-j", job, "-o", "%i"], capture_output=True, text=True,
                                timeout=30).stdout.split()
        for step in (s for s in listed if re.search(r"\.\d+$", s)):
            subprocess.run(["scancel", "--signal=KILL", step], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pass


def _requeue(job_id: str, fields: dict[str, str], why: str, stopped: bool,
             exclude: list[str] = ()) -> tuple[str, str]:
    """Requeue this job (only this array task) unless Slurm is already doing it.

    A preempted job that stops within its GraceTime ends on its own, and Slurm then treats it as
    finished, so the supervisor requeues it; only when the grace ran out and Slurm killed the
    step is Slurm's own requeue under way (state REQUEUE*/PREEMPTED), and nothing is added.
    `scontrol requeue` by an operator shows as COMPLETING with `Restarts` already above this
    run's SLURM_RESTART_COUNT: it reruns, nothing is added. `stopped`: the step stopped on a
    stop request (rather than failing and being retried). `exclude`: nodes the requeued job
    must not run on (failed_twice).
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
    near_limit = _seconds_left(fields) < 600
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if preempted:
        return "preempted", f"preempted; requeued ({why})" if result.returncode == 0 else (
            f"preempted; Slurm requeues it ({why})")
    if result.returncode != 0:
        return policy.GAVE_UP, f"could not requeue: {result.stderr.strip() or 'scontrol failed'}"
    excluded = _exclude_nodes(job_id, fields, list(exclude)) if exclude else ""
    return "requeued", (("time limit near; " if near_limit else "stop signal; ") if stopped else "") + why + excluded

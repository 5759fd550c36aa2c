"""Local backend: runs a plan's stages on this machine, in dependency order.

Multi-process stages run under torchrun; array shards run as parallel processes bounded by
the CPUs. The supervisor restarts an attempt that stopped for requeue or failed (policy.py),
records every attempt in the ledger, and turns Ctrl-C into a graceful, checkpointed stop.
`python -m launcher.backends.local RUN_DIR` is the supervisor; `submit --detach` starts it in
the background.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import attempts, exitcodes, heartbeat, plan as planner, policy, progress, runlock, signals
from ..plan import Plan, StagePlan
from ..runs import RunDir
from . import LOST_REASON, Backend, StageState

POLL_SECONDS = 0.2
PROGRESS_SECONDS = 1.0          # how often a running stage's progress line may change
ORPHAN_GRACE_SECONDS = 300      # a trainer left by a dead supervisor gets this long to checkpoint
SUPERVISOR_START_SECONDS = 60   # how long a detached start waits for its supervisor to hold the run


@dataclass
class Attempt:
    record: attempts.AttemptRecord
    process: subprocess.Popen
    watch: heartbeat.HangWatch
    hang: heartbeat.Hang | None = None      # set when the watch ended the attempt


class LocalSupervisor:
    def __init__(self, run: RunDir, echo=print):
        self.run = run
        self.plan = planner.load(run.path)
        self.echo = echo
        self.stop_signals = 0           # how many times the operator asked us to stop
        self.running: dict[int, Attempt] = {}
        self.warning = signals.number(self.plan.warning_signal)
        self._progress_shown: tuple[float, str] = (0.0, "")     # (when, what) was last echoed

    # -- signals ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        """1st stop: the warning signal to every process of each attempt; 2nd: SIGTERM; 3rd: SIGKILL."""
        self.stop_signals += 1
        escalation = {1: self.warning, 2: signal.SIGTERM}.get(self.stop_signals, signal.SIGKILL)
        for attempt in list(self.running.values()):
            runlock.signal_tree(attempt.process.pid, escalation)

    # -- the run ---------------------------------------------------------------------------
    def run_all(self) -> int:
        """Run every unfinished stage; refused (LockHeld) while another supervisor holds the run.
        Handles the stop signals meanwhile (main thread only)."""
        stop_signals = {signal.SIGINT, signal.SIGTERM, self.warning}
        callers = {signum: signal.signal(signum, self._on_signal) for signum in stop_signals}
        try:
            with supervisor_lock(self.run).acquire(wait_s=2):
                self._stop_orphans()
                for stage in self.plan.stages:
                    for record in self.run.settle_lost_attempts(stage.name):
                        self.echo(f"[{stage.name}] attempt {record['attempt']}: {record['reason']}")
                return self._run_stages()
        finally:                            # a Python caller (launcher.api) gets its handlers back
            for signum, handler in callers.items():
                signal.signal(signum, handler)

    def _stop_orphans(self) -> None:
        """Stop (checkpoint, then exit) what a dead supervisor of this run left running."""
        orphans = runlock.run_processes(self.run.path)
        if orphans:
            self.echo(f"[launcher] {len(orphans)} process(es) of this run outlived their supervisor "
                      f"(pids {', '.join(map(str, orphans))}): asking them to checkpoint and stop")
            runlock.stop_processes(orphans, self.warning, ORPHAN_GRACE_SECONDS, echo=self.echo)

    def _run_stages(self) -> int:
        results: dict[str, str] = {}
        for stage in self.plan.stages:
            name = stage.name
            blocked = [d for d in stage.after if results.get(d) != policy.COMPLETED]
            if stage_state(self.run, stage) == policy.COMPLETED:
                results[name] = policy.COMPLETED
            elif blocked:
                results[name] = "blocked"
                self.echo(f"[{name}] not started: waits for {', '.join(blocked)}")
            elif self.stop_signals or self.run.cancel_requested:
                results[name] = policy.STOPPED
            else:
                results[name] = self.run_stage(stage)
        ok = all(r == policy.COMPLETED for r in results.values())
        return exitcodes.OK if ok else exitcodes.FAILED

    def run_stage(self, stage: StagePlan) -> str:
        name = stage.name
        todo = [s for s in stage.shards if shard_state(self.run, name, s) != policy.COMPLETED]
        limit = parallelism(self.plan, stage)
        final: dict[int, str] = {s: policy.COMPLETED for s in stage.shards if s not in todo}
        self.echo(f"[{name}] starting: {len(todo)} of {len(stage.shards)} shard(s), "
                  f"{stage.processes_per_node} process(es) each")
        while todo or self.running:
            if self.run.cancel_requested and not self.stop_signals:
                self.echo(f"[{name}] cancel requested: stopping")
                self._on_signal(signal.SIGTERM, None)
            while todo and len(self.running) < limit and not self.stop_signals:
                shard = todo.pop(0)
                self.running[shard] = self._start(stage, shard)
            if self.stop_signals and todo:
                final.update({s: policy.STOPPED for s in todo})
                todo.clear()
            time.sleep(POLL_SECONDS)
            self._show_progress(stage, len(final))
            for shard, attempt in list(self.running.items()):
                if attempt.process.poll() is None:
                    self._watch(name, attempt)
                    continue
                del self.running[shard]
                decision = attempts.finish_attempt(
                    self.run, stage, attempt.record, attempt.process.returncode, end=time.time(),
                    operator_stop=bool(self.stop_signals), echo=lambda m: self.echo(f"[{name}] {m}"),
                    failure=attempt.hang.describe() if attempt.hang else None)
                if decision.action == policy.CONTINUE and not self.stop_signals:
                    todo.append(shard)
                else:
                    final[shard] = decision.action
        states = set(final.values())
        result = policy.COMPLETED if states == {policy.COMPLETED} else (
            policy.GAVE_UP if policy.GAVE_UP in states else sorted(states - {policy.COMPLETED})[0])
        self.echo(f"[{name}] {result}")
        return result

    def _watch(self, name: str, attempt: Attempt) -> None:
        """The hang rule: when no rank's heartbeat moved within its phase's budget, dump every
        rank's stacks into its log, record where each stopped, and kill the attempt (the policy
        then restarts it from the newest checkpoint)."""
        if attempt.hang is not None:
            return
        hang = attempt.watch.check()
        if hang is None:
            return
        attempt.hang = hang
        self.echo(f"[{name}] {hang.describe()}: dumping stacks into the rank logs, ending the attempt")
        heartbeat.dump_stacks(hang)
        attempt.record.extra["hang"] = hang.ranks
        runlock.signal_tree(attempt.process.pid, signal.SIGKILL)

    def _show_progress(self, stage: StagePlan, shards_done: int) -> None:
        """Echo the stage's progress (launcher.progress) when it changed, at most every
        PROGRESS_SECONDS: step/total, rate, ETA and losses from metrics.jsonl; shards for arrays."""
        when, shown = self._progress_shown
        if time.monotonic() - when < PROGRESS_SECONDS:
            return
        now = progress.from_rows(progress.tail_rows(self.run.stage(stage.name).metrics), stage.config)
        text = now.line() if now.step is not None else ""
        if stage.array:
            shards = f"shards {shards_done}/{len(stage.shards)} done, {len(self.running)} running"
            text = f"{shards}; {text}" if text else shards
        if text and text != shown:
            self.echo(progress.ProgressLine(stage.name, text))
        self._progress_shown = (time.monotonic(), text or shown)

    def _start(self, stage: StagePlan, shard: int) -> Attempt:
        number = len(self.run.attempts(stage.name, shard))
        env = dict(os.environ)
        env.update(stage.env)
        env.update({"NFS_SHARD_INDEX": str(shard),
                    "NFS_ATTEMPT": str(number), "NFS_RANK_LOGS": "1", "PYTHONUNBUFFERED": "1"})
        log = self.run.stage(stage.name).logs / f"launcher-shard-{shard}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(stage.command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        record = attempts.AttemptRecord(
            stage=stage.name, shard=shard, attempt=number, backend="local",
            job_id=f"local:{process.pid}", nodes=socket.gethostname(), start=time.time(),
            checkpoint_step=self.run.checkpoint_step(stage.name), world_size=stage.world_size)
        record.write(self.run)
        watch = heartbeat.HangWatch(self.run.stage(stage.name).heartbeats(shard, number), stage.hang)
        return Attempt(record, process, watch)


def parallelism(plan: Plan, stage: StagePlan) -> int:
    """How many shards of `stage` run at once here: the spec's caps, else the CPUs."""
    if not stage.array:
        return 1
    cap = plan.local_max_parallel or os.cpu_count() or 1
    return max(1, min(cap, stage.array_parallelism or cap))


def shard_state(run: RunDir, stage: str, shard: int) -> str | None:
    attempts_ = run.attempts(stage, shard)
    return attempts_[-1].get("state") if attempts_ else None


def stage_state(run: RunDir, stage: StagePlan) -> str | None:
    """completed when every shard completed; otherwise the state of the latest attempt."""
    if all(shard_state(run, stage.name, s) == policy.COMPLETED for s in stage.shards):
        return policy.COMPLETED
    attempts_ = run.attempts(stage.name)
    return attempts_[-1].get("state") if attempts_ else None


def supervisor_lock(run: RunDir) -> runlock.RunLock:
    """The lock a local supervisor holds for as long as it runs `run`."""
    return runlock.RunLock(run.layout.supervisor_lock, f"the local supervisor of run {run.run_id}")


def start_detached(run: RunDir, python: str) -> int:
    """Start the supervisor in its own session (output to RUN/supervisor.log) and return its pid
    once it holds the run (or has ended), so that whoever looks next sees the run as live."""
    with open(run.layout.supervisor_log, "ab") as out:
        process = subprocess.Popen([python, "-m", "launcher.backends.local", str(run.path)],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    lock = supervisor_lock(run)
    deadline = time.monotonic() + SUPERVISOR_START_SECONDS
    while process.poll() is None and not lock.is_held() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.pid


class LocalBackend(Backend):
    """Runs the plan here, under LocalSupervisor (in the foreground, or detached)."""
    name = "local"

    def render(self, plan: Plan) -> str:
        out = []
        for stage in plan.stages:
            shards = f"{stage.array} shards, {parallelism(plan, stage)} at once, " if stage.array else ""
            out += [f"### stage {stage.name} (task {stage.task} -> {stage.target})",
                    f"# local: {shards}{stage.processes_per_node} process(es); "
                    f"after: {', '.join(stage.after) or '-'}; restarts <= {stage.max_restarts}",
                    " ".join(shlex.quote(w) for w in stage.command), ""]
        return "\n".join(out)

    def submit(self, run: RunDir, plan: Plan, *, detach: bool, echo) -> int:
        if detach:
            pid = start_detached(run, plan.python)
            echo(f"local supervisor pid {pid} (log: {run.layout.supervisor_log})")
            return exitcodes.OK
        return LocalSupervisor(run, echo=echo).run_all()

    def describe(self, run: RunDir, plan: Plan) -> dict[str, StageState]:
        alive = supervisor_lock(run).is_held()
        states = {}
        for stage in plan.stages:
            history = run.attempts(stage.name)
            state = stage_state(run, stage) or ("pending" if alive else "not started")
            lost = state == "running" and not alive
            states[stage.name] = StageState(history[-1]["job_id"] if history else "-",
                                            "lost" if lost else state, LOST_REASON if lost else None)
        return states

    def jobs(self, run: RunDir, plan: Plan) -> dict[str, list[int]]:
        """{stage: pids of its attempts running now} (each the root of an attempt's process tree:
        torchrun's agent or the task); none once the supervisor is gone."""
        if not supervisor_lock(run).is_held():
            return {}
        running = {stage.name: [int(r["job_id"].split(":", 1)[1]) for r in run.attempts(stage.name)
                                if r.get("state") == "running" and str(r.get("job_id", "")).startswith("local:")]
                   for stage in plan.stages}
        return {name: pids for name, pids in running.items() if pids}

    def live(self, run: RunDir, plan: Plan) -> str | None:
        lock = supervisor_lock(run)
        if lock.is_held():
            return f"run {run.run_id} is held by the local supervisor, {runlock.describe(lock.holder())}"
        return None

    def cancel(self, run: RunDir, plan: Plan) -> str:
        return (f"cancel requested: the local supervisor ({runlock.describe(supervisor_lock(run).holder())}) "
                f"stops its attempts within a second; ranks checkpoint, nothing restarts")

    supervisor_logs = ()            # launcher-shard-<i>.log is found with the rank logs (*.log)


BACKEND = LocalBackend()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run = RunDir(Path(args[0]).resolve())
    return LocalSupervisor(run, echo=progress.Console()).run_all()


if __name__ == "__main__":
    sys.exit(main())

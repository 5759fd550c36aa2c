"""Local backend: runs a plan's stages on this machine, in dependency order.

Multi-process stages run under torchrun; array shards run as parallel processes bounded by
the CPUs. The supervisor restarts an attempt that stopped for requeue or failed (policy.py),
records every attempt in the ledger, and turns Ctrl-C into a graceful, checkpointed stop.
`python -m launcher.backends.local RUN_DIR` is the supervisor; `submit --detach` starts it in
the background.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import exitcodes, policy, runlock, signals
from ..runs import RunDir

POLL_SECONDS = 0.2
ORPHAN_GRACE_SECONDS = 300      # a trainer left by a dead supervisor gets this long to checkpoint


@dataclass
class Attempt:
    shard: int
    number: int
    process: subprocess.Popen
    start: float


class LocalSupervisor:
    def __init__(self, run: RunDir, echo=print):
        self.run = run
        self.plan = run.read_plan()
        self.echo = echo
        self.stop_signals = 0           # how many times the operator asked us to stop
        self.running: dict[int, Attempt] = {}
        self.warning = signals.number(self.plan.get("warning_signal", signals.DEFAULT_WARNING))

    # -- signals ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        """1st stop: the warning signal to every process of each attempt; 2nd: SIGTERM; 3rd: SIGKILL."""
        self.stop_signals += 1
        escalation = {1: self.warning, 2: signal.SIGTERM}.get(self.stop_signals, signal.SIGKILL)
        for attempt in list(self.running.values()):
            runlock.signal_tree(attempt.process.pid, escalation)

    # -- the run ---------------------------------------------------------------------------
    def run_all(self) -> int:
        """Run every unfinished stage; refused (LockHeld) while another supervisor holds the run."""
        for signum in {signal.SIGINT, signal.SIGTERM, self.warning}:
            signal.signal(signum, self._on_signal)
        with supervisor_lock(self.run).acquire(wait_s=2):
            self._stop_orphans()
            for stage in self.plan["stages"]:
                for record in self.run.settle_lost_attempts(stage["name"]):
                    self.echo(f"[{stage['name']}] attempt {record['attempt']}: {record['reason']}")
            return self._run_stages()

    def _stop_orphans(self) -> None:
        """Stop (checkpoint, then exit) what a dead supervisor of this run left running."""
        orphans = runlock.run_processes(self.run.path)
        if orphans:
            self.echo(f"[launcher] {len(orphans)} process(es) of this run outlived their supervisor "
                      f"(pids {', '.join(map(str, orphans))}): asking them to checkpoint and stop")
            runlock.stop_processes(orphans, self.warning, ORPHAN_GRACE_SECONDS, echo=self.echo)

    def _run_stages(self) -> int:
        results: dict[str, str] = {}
        for stage in self.plan["stages"]:
            name = stage["name"]
            blocked = [d for d in stage["after"] if results.get(d) != policy.COMPLETED]
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

    def run_stage(self, stage: dict) -> str:
        name = stage["name"]
        shards = list(range(stage["array"])) if stage["array"] else [0]
        todo = [s for s in shards if shard_state(self.run, name, s) != policy.COMPLETED]
        limit = self._parallelism(stage)
        final: dict[int, str] = {s: policy.COMPLETED for s in shards if s not in todo}
        self.echo(f"[{name}] starting: {len(todo)} of {len(shards)} shard(s), "
                  f"{stage['processes_per_node']} process(es) each")
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
            for shard, attempt in list(self.running.items()):
                if attempt.process.poll() is None:
                    continue
                del self.running[shard]
                decision = self._finish(stage, attempt)
                if decision.action == policy.CONTINUE and not self.stop_signals:
                    todo.append(shard)
                else:
                    final[shard] = decision.action
        states = set(final.values())
        result = policy.COMPLETED if states == {policy.COMPLETED} else (
            policy.GAVE_UP if policy.GAVE_UP in states else sorted(states - {policy.COMPLETED})[0])
        self.echo(f"[{name}] {result}")
        return result

    def _parallelism(self, stage: dict) -> int:
        if not stage["array"]:
            return 1
        cap = self.plan.get("local_max_parallel") or os.cpu_count() or 1
        return max(1, min(cap, stage.get("array_parallelism") or cap))

    def _start(self, stage: dict, shard: int) -> Attempt:
        number = len(self.run.attempts(stage["name"], shard))
        env = dict(os.environ)
        env.update(stage["env"])
        env.update({"NFS_SHARD_INDEX": str(shard),
                    "NFS_ATTEMPT": str(number), "NFS_RANK_LOGS": "1", "PYTHONUNBUFFERED": "1"})
        log = self.run.stage(stage["name"]).logs / f"launcher-shard-{shard}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(stage["command"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        start = time.time()
        self.run.record(stage["name"], f"shard-{shard}-attempt-{number}", {
            "kind": "attempt", "stage": stage["name"], "shard": shard, "attempt": number,
            "backend": "local", "job_id": f"local:{process.pid}", "nodes": socket.gethostname(),
            "start": start, "end": None, "state": "running",
            "checkpoint_step": self.run.checkpoint_step(stage["name"])})
        return Attempt(shard, number, process, start)

    def _finish(self, stage: dict, attempt: Attempt) -> policy.Decision:
        name = stage["name"]
        outcome = self.run.read_outcome(name, attempt.shard, attempt.number) or {}
        code = outcome.get("exit", attempt.process.returncode)
        if code == exitcodes.OK and attempt.process.returncode != 0:
            code = attempt.process.returncode     # rank 0 finished but another rank did not
        previous = self.run.attempts(name, attempt.shard)[-2:-1]
        step = self.run.checkpoint_step(name)
        decision = policy.decide(
            code, error=outcome.get("error"), checkpoint_step=step,
            restarts_used=attempt.number, max_restarts=stage["max_restarts"],
            previous=previous[0] if previous else None,
            cancel_requested=self.run.cancel_requested, operator_stop=bool(self.stop_signals))
        problem = self.run.try_record(name, f"shard-{attempt.shard}-attempt-{attempt.number}", {
            "kind": "attempt", "stage": name, "shard": attempt.shard, "attempt": attempt.number,
            "backend": "local", "job_id": f"local:{attempt.process.pid}",
            "nodes": socket.gethostname(), "start": attempt.start, "end": time.time(),
            "exit_code": code, "outcome": exitcodes.describe(code), "error": outcome.get("error"),
            "signal": outcome.get("signal"), "checkpoint_step": step,
            "state": decision.action, "reason": decision.reason})
        for line in ([problem] if problem else []) + self.run.quarantined_since(name, attempt.start):
            self.echo(f"[{name}] {line}")
        label = f"[{name}]" + (f" shard {attempt.shard}" if stage["array"] else "")
        error = f": {outcome['error']}" if outcome.get("error") else ""
        self.echo(f"{label} attempt {attempt.number}: {exitcodes.describe(code)}{error} -> "
                  f"{decision.action} ({decision.reason})")
        return decision


def shard_state(run: RunDir, stage: str, shard: int) -> str | None:
    attempts = run.attempts(stage, shard)
    return attempts[-1].get("state") if attempts else None


def stage_state(run: RunDir, stage: dict) -> str | None:
    """completed when every shard completed; otherwise the state of the latest attempt."""
    shards = range(stage["array"]) if stage["array"] else [0]
    states = [shard_state(run, stage["name"], s) for s in shards]
    if all(s == policy.COMPLETED for s in states):
        return policy.COMPLETED
    attempts = run.attempts(stage["name"])
    return attempts[-1].get("state") if attempts else None


def supervisor_lock(run: RunDir) -> runlock.RunLock:
    """The lock a local supervisor holds for as long as it runs `run`."""
    return runlock.RunLock(run.layout.supervisor_lock, f"the local supervisor of run {run.run_id}")


def start_detached(run: RunDir, python: str) -> int:
    """Start the supervisor in its own session; its output goes to RUN/supervisor.log."""
    with open(run.layout.supervisor_log, "ab") as out:
        process = subprocess.Popen([python, "-m", "launcher.backends.local", str(run.path)],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    return process.pid


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run = RunDir(Path(args[0]).resolve())
    return LocalSupervisor(run, echo=lambda msg: print(msg, flush=True)).run_all()


if __name__ == "__main__":
    sys.exit(main())

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

from .. import atomic, exitcodes, policy
from ..runs import RunDir

PID_FILE = "local-supervisor.pid"
POLL_SECONDS = 0.2


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

    # -- signals ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stop_signals += 1
        escalation = {1: signal.SIGUSR2, 2: signal.SIGTERM}.get(self.stop_signals, signal.SIGKILL)
        for attempt in list(self.running.values()):
            for pid in process_tree(attempt.process.pid):
                try:
                    os.kill(pid, escalation)
                except ProcessLookupError:
                    pass

    # -- the run ---------------------------------------------------------------------------
    def run_all(self) -> int:
        atomic.write_text(self.run.path / PID_FILE, f"{os.getpid()}\n")
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)
        try:
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
        finally:
            try:
                (self.run.path / PID_FILE).unlink()
            except FileNotFoundError:
                pass

    def run_stage(self, stage: dict) -> str:
        name = stage["name"]
        shards = list(range(stage["array"])) if stage["array"] else [0]
        todo = [s for s in shards if shard_state(self.run, name, s) != policy.COMPLETED]
        limit = self._parallelism(stage)
        final: dict[int, str] = {s: policy.COMPLETED for s in shards if s not in todo}
        self.echo(f"[{name}] starting: {len(todo)} of {len(shards)} shard(s), "
                  f"{stage['processes_per_node']} process(es) each")
        while todo or self.running:
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
        env.update({"NFS_SHARD_INDEX": str(shard), "NFS_SHARD_COUNT": str(max(1, stage["array"])),
                    "NFS_ATTEMPT": str(number), "NFS_RANK_LOGS": "1", "PYTHONUNBUFFERED": "1"})
        log = self.run.stage_dir(stage["name"]) / "logs" / f"launcher-shard-{shard}.log"
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
        self.run.record(name, f"shard-{attempt.shard}-attempt-{attempt.number}", {
            "kind": "attempt", "stage": name, "shard": attempt.shard, "attempt": attempt.number,
            "backend": "local", "job_id": f"local:{attempt.process.pid}",
            "nodes": socket.gethostname(), "start": attempt.start, "end": time.time(),
            "exit_code": code, "outcome": exitcodes.describe(code), "error": outcome.get("error"),
            "signal": outcome.get("signal"), "checkpoint_step": step,
            "state": decision.action, "reason": decision.reason})
        label = f"[{name}]" + (f" shard {attempt.shard}" if stage["array"] else "")
        self.echo(f"{label} attempt {attempt.number}: {exitcodes.describe(code)} -> "
                  f"{decision.action} ({decision.reason})")
        return decision


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc: torchrun starts its workers in sessions of
    their own, so a process-group signal would miss them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


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


def supervisor_pid(run: RunDir) -> int | None:
    """PID of a live local supervisor of this run, or None."""
    try:
        pid = int((run.path / PID_FILE).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_detached(run: RunDir, python: str) -> int:
    """Start the supervisor in its own session; its output goes to RUN/supervisor.log."""
    with open(run.path / "supervisor.log", "ab") as out:
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

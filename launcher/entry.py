"""`python -m launcher.entry RUN_DIR STAGE`: what every rank of every stage runs.

Reads the plan, builds the TaskContext, installs the stop request, calls the task, and leaves
an outcome record (rank 0) so the supervisor can tell "stopped for requeue" from a failure
even when torchrun folds exit codes into its own.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import time
import traceback
from pathlib import Path

from . import atomic, exitcodes, failures, heartbeat, signals, tasks
from .runs import RunDir
from .runtime.context import CheckpointPolicy, TaskContext


def _int_env(*names: str, default: int = 0) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def _redirect_output(log_path: Path) -> None:
    """Send this rank's stdout/stderr to its own log file in the run directory."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def build_context(run: RunDir, stage: dict, stop) -> TaskContext:
    return TaskContext(
        run_dir=run.path, stage=stage["name"], config=stage["config"],
        shard_index=_int_env("SLURM_ARRAY_TASK_ID", "NFS_SHARD_INDEX"),
        shard_count=max(1, stage["array"]),
        attempt=_int_env("NFS_ATTEMPT", "SLURM_RESTART_COUNT"),
        device=stage["device"], checkpoint=CheckpointPolicy(**stage["checkpoint"]), stop=stop)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m launcher.entry RUN_DIR STAGE", file=sys.stderr)
        return exitcodes.BAD_SPEC
    run = RunDir(Path(args[0]))
    stage = next(s for s in run.read_plan()["stages"] if s["name"] == args[1])
    rank = _int_env("RANK")
    from .runtime.preemption import StopForRequeue, StopRequest
    stop = StopRequest(["SIG" + s for s in stage["stop_signals"]]).install()
    stop.stop_when_parent_dies()        # an orphaned rank checkpoints and exits
    ctx = build_context(run, stage, stop)
    if os.environ.get("NFS_RANK_LOGS") == "1":
        _redirect_output(ctx.layout.rank_log(ctx.attempt, ctx.shard_index if stage["array"] else None, rank))
    # The supervisor's hang watch sends SIGQUIT: every thread's stack goes to this rank's log.
    faulthandler.register(signals.number(heartbeat.DUMP_SIGNAL), all_threads=True, chain=False)
    print(f"[launcher.entry] {stage['name']} rank {rank} shard {ctx.shard_index}/{ctx.shard_count} "
          f"attempt {ctx.attempt} task {stage['target']}", flush=True)
    outcome = {"rank": rank, "start": time.time()}
    ended = None        # the task's exception, kept alive: freeing its frames tears down process groups
    beat = heartbeat.Heartbeat(ctx.layout.heartbeat(ctx.shard_index, ctx.attempt, rank), rank)
    beat.beat(0, heartbeat.LAUNCHING)       # watched from here: imports and rendezvous can hang too
    os.environ[heartbeat.HEARTBEAT_VARIABLE] = str(beat.path)    # distributed.init watches a rendezvous
    try:
        task = tasks.load_callable(stage["target"])
        if not heartbeat.runs_step_loop(task):
            beat.remove()                   # no steps to beat: from here on watched only in a rendezvous
        task(ctx)
        code = exitcodes.OK
    except StopForRequeue as stopped:
        ended, code = stopped, exitcodes.STOPPED_FOR_REQUEUE
        outcome["step"] = stopped.step
    except BaseException as exc:  # the whole traceback goes to this rank's log
        traceback.print_exc()
        ended, code = exc, exitcodes.FAILED
        outcome.update(failures.summarize(exc))
    outcome.update(exit=code, end=time.time(), signal=stop.signal_name)
    if rank == 0:
        atomic.write_json(run.outcome_path(stage["name"], ctx.shard_index, ctx.attempt), outcome)
    elif "error" in outcome:        # the supervisor shows it when rank 0 itself did not fail
        atomic.write_json(ctx.layout.rank_failure(ctx.shard_index, ctx.attempt, rank), outcome)
    print(f"[launcher.entry] exit {code} ({exitcodes.describe(code)})", flush=True)
    # Skip the interpreter's teardown, whatever the task imported: it joins every non-daemon
    # thread a task left running (a writer, a pool: the rank would never exit and would hold its
    # job), and destroying a gloo group while its worker thread waits for the GIL deadlocks (seen
    # when the peer rank had already exited). Everything worth keeping is written and flushed above.
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

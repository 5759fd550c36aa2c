"""The launcher as a Python API, for notebooks and scripts; every CLI command is one call here.

    from launcher import api
    run = api.submit("jobs/demo.yaml", overrides={"stages.stylenerf.config.max_steps": 20})
    run.wait(timeout=3600)          # {stage: state}
    run.metrics("stylenerf")        # the rows of stages/stylenerf/metrics.jsonl

CLI -> API: validate -> validate(); render, submit --dry-run -> render(); submit [--detach] ->
submit(detach=); status RUN -> open_run(RUN).table() (typed: .stages); status, list -> overview()
(typed: runs()); logs RUN -> open_run(RUN).logs(stage, rank) (printing and --follow stay in the
CLI); cancel RUN -> open_run(RUN).cancel(); resume RUN -> open_run(RUN).resume(fresh_start, detach).

It builds on the same functions as the CLI (spec loading, planning, the run directory, the
backends, status). Importing it loads neither torch, DeepSpeed nor the workload; validating a
spec loads its tasks' checks (entry points that import no torch).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from . import plan as planner, policy, runlock, status
from .backends import local as local_backend
from .layout import RunLayout
from .runs import RunDir, find_run
from .spec import JobSpec, SpecInvalid, load_spec

__all__ = ["validate", "render", "submit", "open_run", "runs", "overview", "override_list",
           "Run", "StageStatus", "Cancelled", "SpecInvalid", "UnknownStage", "NotResumable", "WaitTimeout"]

DEFAULT_RUN_ROOT = "runs"
SUPERVISOR_START_SECONDS = 60   # how long `submit` waits for a detached supervisor to hold its run
POLL_SECONDS = {"local": 0.5, "slurm": 5.0}    # `wait`: a lock test is free, an squeue is not


class UnknownStage(ValueError):
    """A stage name that the run does not have."""


class NotResumable(RuntimeError):
    """`resume` refused: something of the run is still alive."""


class WaitTimeout(TimeoutError):
    """`Run.wait` ran out of time; `states` is what the stages were at that moment."""

    def __init__(self, run_id: str, timeout: float, states: dict[str, str]):
        super().__init__(f"run {run_id} still active after {timeout:g}s: "
                         + ", ".join(f"{k} {v}" for k, v in states.items()))
        self.states = states


# -- specs ---------------------------------------------------------------------------------
Overrides = Iterable[str] | Mapping[str, Any] | None   # ["k.path=v", ...] as --set, or {"k.path": v}


def override_list(overrides: Overrides) -> list[str]:
    """Overrides as the CLI's `--set key.path=value` strings; a mapping's values are written as
    JSON (which is YAML), so they parse back to the same values (a path as its string)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(os.fspath(value) if isinstance(value, os.PathLike) else value)}"
                for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError("overrides: give a list of 'key=value' strings or a mapping, not one string")
    return list(overrides)


def validate(spec: str | Path | dict, overrides: Overrides = None, backend: str | None = None) -> JobSpec:
    """`launcher validate`: the spec (a YAML file or a mapping, with overrides), typed; raises
    SpecInvalid naming the file (or `<dict spec>`), line and field of every problem. A mapping's
    `include:` files are found from the current directory."""
    return load_spec(spec, override_list(overrides), backend=backend)


def render(spec: str | Path | dict, overrides: Overrides = None, backend: str | None = None) -> str:
    """`launcher render` (and `submit --dry-run`): exactly what submit would run."""
    from .cli import render as render_plan     # today's renderer; moves behind the backend interface
    job = validate(spec, overrides, backend)
    run_dir = str(Path(job.run_root).expanduser().resolve() / f"{job.name}-RUN_ID")
    return render_plan(planner.build(job, run_dir, sys.executable), job.local.max_parallel)


def submit(spec: str | Path | dict, overrides: Overrides = None, backend: str | None = None, detach: bool = True,
           echo: Callable[[str], None] | None = None) -> "Run":
    """`launcher submit`: validate, create the run directory, start the stages; the Run.

    Local runs start a detached supervisor (as `submit --detach`) unless `detach=False`, which
    runs the supervisor in this process until the run ends, printing through `echo`. Slurm
    stages are queued with their dependencies either way.
    """
    job = validate(spec, overrides, backend)
    run = RunDir.create(Path(job.run_root), job.name)
    run.write_spec(yaml.safe_dump(job.raw, sort_keys=False))
    plan = planner.build(job, str(run.path), sys.executable)
    plan["local_max_parallel"] = job.local.max_parallel
    run.write_plan(plan)
    handle = Run(run)
    handle._start(detach, echo)
    return handle


def open_run(run: str | Path, run_root: str | Path | None = None) -> "Run":
    """An existing run by directory, id or unique id prefix (under `run_root`, default
    $NFS_RUN_ROOT or 'runs'); FileNotFoundError names where it looked."""
    return Run(find_run(str(run), [_root(run_root)]))


def runs(run_root: str | Path | None = None) -> list["Run"]:
    """`launcher list`: the runs under `run_root`, newest first."""
    root = _root(run_root)
    paths = [p for p in root.glob("*") if RunLayout(p).plan.is_file()] if root.is_dir() else []
    return [Run(RunDir(p)) for p in sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)]


def overview(run_root: str | Path | None = None) -> str:
    """`launcher status` without a run: one line per run."""
    return status.runs_overview(_root(run_root))


def _root(run_root: str | Path | None) -> Path:
    return Path(run_root or os.environ.get("NFS_RUN_ROOT", DEFAULT_RUN_ROOT)).expanduser().resolve()


# -- runs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageStatus:
    """One stage as `launcher status` shows it, read from the run directory (and Slurm)."""

    name: str
    job: str                    # latest Slurm job id, or local:<pid> of the latest attempt, or '-'
    state: str                  # completed, running, gave-up, cancelled, lost, a Slurm state, ...
    attempts: int
    checkpoint_step: int | None
    progress: str
    reason: str


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` did: the Slurm jobs it signalled or withdrew, or the local supervisor that
    will stop its attempts (None when none was running)."""

    backend: str
    slurm_jobs: list[str]
    supervisor: str | None

    def __str__(self) -> str:
        if self.backend == "slurm":
            return f"cancelled slurm jobs: {', '.join(self.slurm_jobs) or 'none active'}"
        if self.supervisor:
            return (f"cancel requested: the local supervisor ({self.supervisor}) stops its attempts "
                    f"within a second; ranks checkpoint, nothing restarts")
        return "no local supervisor is running"


class Run:
    """A run directory and the operations on it. Every property reads the current state."""

    def __init__(self, run: RunDir):
        self.dir = run
        self._supervisor_pid: int | None = None     # a detached supervisor this process started

    def __repr__(self) -> str:
        return f"Run({self.id!r}, backend={self.backend!r}, path={str(self.path)!r})"

    @property
    def id(self) -> str:
        return self.dir.run_id

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def plan(self) -> dict:
        return self.dir.read_plan()

    @property
    def backend(self) -> str:
        return self.plan["backend"]

    @property
    def stage_names(self) -> list[str]:
        """In dependency order."""
        return [s["name"] for s in self.plan["stages"]]

    @property
    def cancel_requested(self) -> bool:
        return self.dir.cancel_requested

    # -- state ---------------------------------------------------------------------------
    @property
    def stages(self) -> list[StageStatus]:
        """Every stage's status, in dependency order (the rows of `launcher status RUN`)."""
        out = []
        for name, job, state, attempts, step, progress, reason in status.stage_rows(self.dir):
            out.append(StageStatus(name, job, state, int(attempts), None if step == "-" else int(step),
                                   progress, reason))
        return out

    def states(self) -> dict[str, str]:
        return {s.name: s.state for s in self.stages}

    def table(self) -> str:
        """`launcher status RUN`."""
        return status.run_table(self.dir)

    def attempts(self, stage: str) -> list[dict]:
        """The stage's ledger records of attempts, oldest first."""
        return self.dir.attempts(self._stage(stage))

    def jobs(self) -> dict[str, str]:
        """Slurm: {stage: id of its latest job}. The seam where a submitit-based backend returns
        its job objects instead; local runs have none (see `processes`)."""
        if self.backend != "slurm":
            return {}
        from .backends import slurm
        return slurm.latest_job_ids(self.dir, self.plan)

    def processes(self) -> dict[str, list[int]]:
        """Local: {stage: pids of its attempts running now} (each the root of an attempt's
        process tree: torchrun's agent or the task); empty once the supervisor is gone."""
        if self.backend != "local" or not self.active():
            return {}
        out = {}
        for name in self.stage_names:
            pids = [int(r["job_id"].split(":", 1)[1]) for r in self.dir.attempts(name)
                    if r.get("state") == "running" and str(r.get("job_id", "")).startswith("local:")]
            if pids:
                out[name] = pids
        return out

    def supervisor(self) -> dict | None:
        """Local: who supervises the run now ({host, pid, since}), None when no one does."""
        if self.backend != "local":
            return None
        lock = local_backend.supervisor_lock(self.dir)
        return (lock.holder() or {}) if lock.is_held() else None

    def active(self) -> bool:
        """True while something of the run can still change its state: a local supervisor holds
        it (or the one this process started has not exited), or Slurm holds one of its jobs."""
        if self.backend == "slurm":
            from .backends import slurm
            return bool(slurm.active_jobs(self.dir, self.plan))
        return self._own_supervisor_alive() or local_backend.supervisor_lock(self.dir).is_held()

    def wait(self, timeout: float | None = None, poll: float | None = None) -> dict[str, str]:
        """Block until the run is no longer active, checking every `poll` seconds (by backend:
        POLL_SECONDS); its final {stage: state}. Raises WaitTimeout (a TimeoutError, carrying
        the states) after `timeout` seconds; the run goes on."""
        interval = POLL_SECONDS[self.backend] if poll is None else poll
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.active():
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(self.id, timeout, self.states())
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
        return self.states()

    def done(self) -> bool:
        """True when every stage completed."""
        return all(state == policy.COMPLETED for state in self.states().values())

    # -- data ----------------------------------------------------------------------------
    def metrics(self, stage: str) -> list[dict]:
        """The rows of stages/<stage>/metrics.jsonl ({"step", "time", ...}), oldest first; a
        line still being written is left out."""
        path = self.dir.stage(self._stage(stage)).metrics
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def logs(self, stage: str | None = None, rank: int | None = None) -> list[Path]:
        """`launcher logs RUN`: the log files, oldest attempt first, narrowed to a stage/rank."""
        return status.log_files(self.dir, None if stage is None else self._stage(stage), rank)

    # -- operations ----------------------------------------------------------------------
    def cancel(self) -> Cancelled:
        """`launcher cancel`: stop the run gracefully (ranks checkpoint; nothing is requeued or
        restarted after this). Returns at once; `wait()` for the stages to stop."""
        self.dir.request_cancel()
        if self.backend == "slurm":
            from .backends import slurm
            return Cancelled("slurm", slurm.cancel(self.dir, self.plan), None)
        holder = self.supervisor()
        return Cancelled("local", [], None if holder is None else runlock.describe(holder))

    def resume(self, fresh_start: Iterable[str] = (), detach: bool = True,
               echo: Callable[[str], None] | None = None) -> "Run":
        """`launcher resume`: restart every unfinished stage from its checkpoint. `fresh_start`
        names stages allowed to start over when none of their checkpoints is usable. Raises
        UnknownStage, or NotResumable while something of the run is alive."""
        fresh = list(fresh_start)
        unknown = sorted(set(fresh) - set(self.stage_names))
        if unknown:
            raise UnknownStage(f"no stage {', '.join(unknown)} in run {self.id} "
                               f"(stages: {', '.join(self.stage_names)})")
        refusal = self._live_attempts()
        if refusal:
            raise NotResumable(f"not resumed: {refusal}")
        self.dir.clear_cancel()
        for stage in fresh:
            self.dir.allow_fresh_start(stage)
        self._start(detach, echo)
        return self

    # -- internals -----------------------------------------------------------------------
    def _stage(self, name: str) -> str:
        if name not in self.stage_names:
            raise UnknownStage(f"no stage {name!r} in run {self.id} (stages: {', '.join(self.stage_names)})")
        return name

    def _start(self, detach: bool, echo: Callable[[str], None] | None) -> None:
        plan = self.plan
        if plan["backend"] == "slurm":
            from .backends import slurm
            slurm.submit(self.dir, plan)
            return
        if not detach:
            self._supervise_here(echo or (lambda message: None))
            return
        self._supervisor_pid = local_backend.start_detached(self.dir, plan["python"])
        self._await_supervisor()

    def _supervise_here(self, echo: Callable[[str], None]) -> None:
        """Run the local supervisor in this process (main thread only: it handles Ctrl-C and the
        stop signals while it runs), then give the caller its own signal handlers back."""
        supervisor = local_backend.LocalSupervisor(self.dir, echo=echo)
        stop_signals = {signal.SIGINT, signal.SIGTERM, supervisor.warning}
        saved = {signum: signal.getsignal(signum) for signum in stop_signals}
        try:
            supervisor.run_all()
        finally:
            for signum, handler in saved.items():
                signal.signal(signum, handler)

    def _await_supervisor(self) -> None:
        """Return once the detached supervisor holds the run (or has already ended), so that a
        Run opened elsewhere sees it as active from now on."""
        lock = local_backend.supervisor_lock(self.dir)
        deadline = time.monotonic() + SUPERVISOR_START_SECONDS
        while self._own_supervisor_alive() and not lock.is_held() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _own_supervisor_alive(self) -> bool:
        """Whether the detached supervisor this process started is still running (reaped here)."""
        if self._supervisor_pid is None:
            return False
        try:
            pid, _ = os.waitpid(self._supervisor_pid, os.WNOHANG)
        except ChildProcessError:       # already reaped
            pid = self._supervisor_pid
        if pid == 0:
            return True
        self._supervisor_pid = None
        return False

    def _live_attempts(self) -> str | None:
        """Why the run cannot be resumed now (something of it is still live), or None."""
        if self.backend == "slurm":
            from .backends import slurm
            active = slurm.active_jobs(self.dir, self.plan)
            return (f"Slurm still holds job(s) {', '.join(active)} of run {self.id}; "
                    f"wait for them or `cancel` first") if active else None
        lock = local_backend.supervisor_lock(self.dir)
        if lock.is_held():
            return f"run {self.id} is held by the local supervisor, {runlock.describe(lock.holder())}"
        return None

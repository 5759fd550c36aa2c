"""The launcher as a Python API, for notebooks and scripts; the CLI (`launcher.cli`) is a thin
layer over it that parses arguments and prints.

    from launcher import api
    run = api.submit("jobs/demo.yaml", overrides={"stages.stylenerf.config.max_steps": 20})
    run.wait(timeout=3600)          # {stage: state}
    run.metrics("stylenerf")        # the rows of stages/stylenerf/metrics.jsonl

CLI -> API: validate -> validate(); render, submit --dry-run -> render(); submit [--detach] ->
submit(detach=); status RUN -> open_run(RUN).table() (typed: .stages); status, list -> overview()
(typed: runs()); logs RUN -> open_run(RUN).logs(stage, rank) (printing and --follow stay in the
CLI); cancel RUN -> open_run(RUN).cancel(); resume RUN -> open_run(RUN).resume(fresh_start, detach).

A run talks to its backend only through `launcher.backends` (the plan names which). Importing
this module loads neither torch, DeepSpeed nor the workload; validating a spec loads its tasks'
checks (entry points that import no torch).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from . import backends, plan as planner, policy, status
from .layout import RunLayout
from .runs import RunDir, find_run
from .spec import JobSpec, SpecInvalid, load_spec

__all__ = ["validate", "render", "submit", "open_run", "runs", "overview", "override_list", "resolve_run_root",
           "Run", "StageStatus", "Cancelled", "SpecInvalid", "UnknownStage", "NotResumable", "WaitTimeout"]

DEFAULT_RUN_ROOT = "runs"
POLL_SECONDS = {"local": 0.5, "slurm": 5.0}    # `wait`: a lock test is free, an squeue is not

Echo = Callable[[str], None]


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


def _quiet(message: str) -> None:
    """The default echo: a Python caller reads states from the Run instead."""


# -- specs ---------------------------------------------------------------------------------
Overrides = Iterable[str] | Mapping[str, Any] | None   # ["k.path=v", ...] as --set, or {"k.path": v}
RESOURCE_OVERRIDE = re.compile(r"^stages\.[^.=]+\.resources\.[^=]+=")   # what `resume --set` may change


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
    """`launcher render` (and `submit --dry-run`): exactly what submit would run. A spec that only
    the task checks refuse (weights missing on this machine, say) is still rendered, its problems
    listed above the script; any other problem raises SpecInvalid."""
    try:
        job, problems = validate(spec, overrides, backend), []
    except SpecInvalid as invalid:
        job = load_spec(spec, override_list(overrides), backend=backend, check_tasks=False)
        problems = invalid.problems
    plan = planner.build(job, str(resolve_run_root(job.run_root) / f"{job.name}-RUN_ID"), sys.executable)
    head = ""
    if problems:
        head = (f"# submit refuses this spec as it stands here ({len(problems)} problem(s)):\n"
                + "\n".join(f"#   {problem}" for problem in problems) + "\n\n")
    return head + backends.for_plan(plan).render(plan)


def submit(spec: str | Path | dict, overrides: Overrides = None, backend: str | None = None, detach: bool = True,
           echo: Echo = _quiet) -> "Run":
    """`launcher submit`: validate, create the run directory, start the stages; the Run.

    Local runs start a detached supervisor and return once it holds the run, unless
    `detach=False`, which supervises in this process until the run ends (main thread only: it
    handles Ctrl-C), printing through `echo`; `Run.exit_code` is then the run's. Slurm stages are
    queued with their dependencies either way.
    """
    job = validate(spec, overrides, backend)
    run = RunDir.create(Path(job.run_root), job.name)
    run.write_spec(yaml.safe_dump(job.raw, sort_keys=False))
    plan = planner.build(job, str(run.path), sys.executable)
    run.write_plan(plan)
    echo(f"run {run.run_id}\ndirectory {run.path}")
    handle = Run(run)
    handle._start(detach, echo)
    return handle


def resolve_run_root(run_root: str | Path | None = None) -> Path:
    """Where runs live: `run_root`, else $NFS_RUN_ROOT, else 'runs' (made absolute)."""
    return Path(run_root or os.environ.get("NFS_RUN_ROOT", DEFAULT_RUN_ROOT)).expanduser().resolve()


def open_run(run: str | Path, run_root: str | Path | None = None) -> "Run":
    """An existing run by directory, id or unique id prefix (under `run_root`, see
    resolve_run_root()); FileNotFoundError names where it looked."""
    return Run(find_run(str(run), [resolve_run_root(run_root)]))


def runs(run_root: str | Path | None = None) -> list["Run"]:
    """`launcher list`: the runs under `run_root`, newest first."""
    root = resolve_run_root(run_root)
    paths = [p for p in root.glob("*") if RunLayout(p).plan.is_file()] if root.is_dir() else []
    return [Run(RunDir(p)) for p in sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)]


def overview(run_root: str | Path | None = None) -> str:
    """`launcher status` without a run: one line per run."""
    return status.runs_overview(resolve_run_root(run_root))


# -- runs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageStatus:
    """One stage as `launcher status` shows it, read from the run directory and the backend."""

    name: str
    job: str                    # latest Slurm job id, or local:<pid> of the latest attempt, or '-'
    state: str                  # completed, running, gave-up, cancelled, lost, a Slurm state, ...
    attempts: int
    checkpoint_step: int | None
    progress: str
    reason: str                 # the last attempt's error and reason, after any stragglers
    world_sizes: str = "-"      # the ranks of each attempt, oldest first ("2,3": resumed on 3)
    stragglers: tuple[str, ...] = ()    # ranks of the newest attempt the others keep waiting for


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` did, in the backend's words; `live` is False when nothing was running (then
    nothing was marked either)."""

    message: str
    live: bool

    def __str__(self) -> str:
        return self.message


class Run:
    """A run directory and the operations on it. Every property reads the current state."""

    def __init__(self, run: RunDir):
        self.dir = run
        self.exit_code: int | None = None   # of the last start: the run's own when supervised here

    def __repr__(self) -> str:
        return f"Run({self.id!r}, backend={self.backend!r}, path={str(self.path)!r})"

    @property
    def id(self) -> str:
        return self.dir.run_id

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def plan(self) -> planner.Plan:
        return planner.load(self.path)

    @property
    def backend(self) -> str:
        return self.plan.backend

    @property
    def stage_names(self) -> list[str]:
        """In dependency order."""
        return [s.name for s in self.plan.stages]

    @property
    def cancel_requested(self) -> bool:
        return self.dir.cancel_requested

    # -- state ---------------------------------------------------------------------------
    @property
    def stages(self) -> list[StageStatus]:
        """Every stage's status, in dependency order (the rows of `launcher status RUN`)."""
        return [StageStatus(name, job, state, int(attempts), None if step == "-" else int(step), progress, reason,
                            ranks, tuple(status.stragglers(self.dir, name)))
                for name, job, state, attempts, ranks, step, progress, reason in status.stage_rows(self.dir)]

    def states(self) -> dict[str, str]:
        return {s.name: s.state for s in self.stages}

    def table(self) -> str:
        """`launcher status RUN`."""
        return status.run_table(self.dir)

    def attempts(self, stage: str) -> list[dict]:
        """The stage's ledger records of attempts, oldest first."""
        return self.dir.attempts(self._stage(stage))

    def jobs(self) -> dict[str, list]:
        """{stage: what runs it}: submitit job objects of its latest submission, one per array
        task (Slurm), or the pids of its attempts running now (local)."""
        plan = self.plan
        return backends.for_plan(plan).jobs(self.dir, plan)

    def live(self) -> str | None:
        """What of the run is alive now (a local supervisor, jobs Slurm holds), in words; None
        when nothing is, and the stages' states are final until a `resume`."""
        plan = self.plan
        return backends.for_plan(plan).live(self.dir, plan)

    def active(self) -> bool:
        return self.live() is not None

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
        """`launcher logs RUN`: the log files, stage by stage, oldest attempt first; narrowed to
        a stage and a rank if given."""
        plan = self.plan
        backend = backends.for_plan(plan)
        names = self.stage_names if stage is None else [self._stage(stage)]
        return [f for name in names for f in backend.log_files(self.dir, name, rank)]

    # -- operations ----------------------------------------------------------------------
    def cancel(self) -> Cancelled:
        """`launcher cancel`: stop the run gracefully (ranks checkpoint; nothing is requeued or
        restarted after this). Returns at once; `wait()` for the stages to stop. A run with
        nothing alive is left as it is."""
        plan = self.plan
        backend = backends.for_plan(plan)
        if backend.live(self.dir, plan) is None:
            states = ", ".join(f"{name} {st.state}" for name, st in backend.describe(self.dir, plan).items())
            return Cancelled(f"run {self.id} is not running ({states or 'nothing started'}): nothing to cancel",
                             live=False)
        self.dir.request_cancel()
        return Cancelled(backend.cancel(self.dir, plan), live=True)

    def resume(self, fresh_start: Iterable[str] = (), detach: bool = True, echo: Echo = _quiet,
               overrides: Overrides = None) -> "Run":
        """`launcher resume`: restart every unfinished stage from its checkpoint. `fresh_start`
        names stages allowed to start over when none of their checkpoints is usable;
        `overrides` (`--set stages.S.resources.K=V` only) change stage resources first, e.g. the
        nodes or processes per node: training resumes on the new world size (resharded on load).
        Raises UnknownStage, SpecInvalid, or NotResumable while something of the run is alive."""
        fresh = list(fresh_start)
        unknown = sorted(set(fresh) - set(self.stage_names))
        if unknown:
            raise UnknownStage(f"--fresh-start: no stage {', '.join(unknown)} in run {self.id} "
                               f"(stages: {', '.join(self.stage_names)})")
        live = self.live()
        if live:
            raise NotResumable(f"not resumed: {live}")
        if overrides:
            self._replan(override_list(overrides))
        self.dir.clear_cancel()
        for stage in fresh:
            self.dir.allow_fresh_start(stage)
        echo(f"resuming run {self.id}")
        self._start(detach, echo)
        return self

    # -- internals -----------------------------------------------------------------------
    def _replan(self, settings: list[str]) -> None:
        """The frozen spec with `settings` applied, validated as at submit, written back with the
        plan built from it (each file atomically); only stage resources may change."""
        foreign = [s for s in settings if not RESOURCE_OVERRIDE.match(s)]
        if foreign:
            raise NotResumable(f"not resumed: resume --set changes stage resources only "
                               f"(stages.STAGE.resources.KEY=VALUE), not {', '.join(foreign)}")
        # the stages that will run again have their checkpoints judged (a completed one never resumes)
        rerun = [name for name, state in self.states().items() if state != policy.COMPLETED]
        job = load_spec(self.dir.layout.spec, settings, backend=self.plan.backend,
                        checkpoint_dirs={s: self.dir.stage(s).checkpoints for s in rerun})
        self.dir.write_spec(yaml.safe_dump(job.raw, sort_keys=False))
        self.dir.write_plan(planner.build(job, str(self.dir.path), sys.executable))

    def _stage(self, name: str) -> str:
        if name not in self.stage_names:
            raise UnknownStage(f"run {self.id} has no stage {name!r} (stages: {', '.join(self.stage_names)})")
        return name

    def _start(self, detach: bool, echo: Echo) -> None:
        plan = self.plan
        self.exit_code = backends.for_plan(plan).submit(self.dir, plan, detach=detach, echo=echo)


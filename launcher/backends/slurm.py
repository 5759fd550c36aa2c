"""Slurm backend on submitit: one submitit SlurmExecutor per stage, chained with afterok.

What goes through submitit: the batch script (`_make_sbatch_string`, from the executor's
parameters), submission (`submit`, and `submit_array` for arrays with their `%` cap), the
dependencies (its `dependency` parameter) and job states (a submitit InfoWatcher that batches
one query for all jobs: `sacct` when accounting is on, `squeue` when it is off). The batch step
runs submitit's `submitit.core._submit`, which calls `launcher.supervise.attempt`; that
supervisor replaces submitit's signal handlers with its own before the step starts, so it stays
the only layer that requeues. What does not: `cancel` (submitit's `job.cancel()` is a plain
`scancel`, a job termination that srun turns into SIGKILL; ours signals the step so the ranks
checkpoint) and the requeue itself (`scontrol requeue` by the supervisor, which alone knows
whether Slurm is already requeueing a preempted job).
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import time
from pathlib import Path

from submitit.core import utils as submitit_utils
from submitit.slurm import slurm as submitit_slurm

from .. import exitcodes, supervise
from ..layout import RunLayout
from ..plan import Plan, StagePlan
from ..runs import RunDir
from . import LOST_REASON, Backend, StageState

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
          "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED"}


class SlurmUnavailable(RuntimeError):
    pass


def accounting_enabled() -> bool:
    """Whether `sacct` answers here (slurmdbd runs); without it, states come from squeue."""
    try:
        return subprocess.run(["sacct", "-X", "-n", "-j", "1"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class QueueWatcher(submitit_slurm.SlurmInfoWatcher):
    """submitit's state watcher (one batched query for every registered job), asking `squeue`
    instead of `sacct` on clusters without accounting, where sacct only errors."""

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s)
        self._use_sacct: bool | None = None

    def _make_command(self) -> list[str] | None:
        if self._use_sacct is None:
            self._use_sacct = accounting_enabled()
        if self._use_sacct:
            return super()._make_command()
        return _squeue_command(self._registered - self._finished)

    def update(self) -> None:
        """submitit's update, except that with squeue a job missing from the answer has left the
        queue for good (a requeued job keeps its id): its state becomes UNKNOWN (the ledger has
        its end) and it is not asked for again. squeue's "Invalid job id" (every job asked for
        has left) means the same, not an error to warn about."""
        command = self._make_command()
        if command is None:
            return
        if command[0] == "sacct":
            return self._update_from_accounting()
        queued = self._queued(command)
        if queued is None:
            return super().update()     # a real failure: submitit warns, states stay as they were
        self._num_calls += 1
        self._info_dict.update(queued)
        for job_id in self._registered - self._finished - queued.keys():
            self._info_dict[job_id] = {}
            self._finished.add(job_id)
        self._last_status_check = time.time()

    def _update_from_accounting(self) -> None:
        """submitit's sacct update. slurmctld hands a new job to slurmdbd a moment after
        submission (about 1.5 s on the local cluster), and sacct knows nothing of it until then:
        jobs it has never listed are read from squeue meanwhile, else they would read UNKNOWN,
        as if gone, and a run just submitted would look ended."""
        super().update()
        unseen = self._registered - self._finished - self._info_dict.keys()
        if unseen:
            queued = self._queued(_squeue_command(unseen))
            self._num_calls += 1
            self._info_dict.update({job: info for job, info in (queued or {}).items() if job in unseen})

    def _queued(self, command: list[str]) -> dict[str, dict[str, str]] | None:
        """squeue's answer as {job or array task: info} ({} when none is queued); None when
        squeue itself failed."""
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            return {} if "Invalid job id" in result.stderr else None
        return self.read_info(result.stdout)

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        if text.startswith("JOBID|"):           # squeue's header: name the columns as sacct does
            text = "JobID|State|NodeList" + text[len("JOBID|STATE|NODELIST"):]
        return super().read_info(text)


def _squeue_command(jobs) -> list[str] | None:
    """One squeue call for these jobs (array tasks asked for by their array's id)."""
    ids = sorted({job.split("_")[0] for job in jobs})
    return ["squeue", "--array", "-o", "%i|%T|%N", "-j", ",".join(ids)] if ids else None


class StageJob(submitit_slurm.SlurmJob):
    watcher = QueueWatcher()


class StageExecutor(submitit_slurm.SlurmExecutor):
    """submitit's executor for one stage: its parameters from the plan; logs and the submitted
    pickles under `stages/<stage>/submitit/`, the job's output under `stages/<stage>/logs/`."""

    job_class = StageJob

    def __init__(self, run_dir: str, stage: StagePlan, after_ids: list[str] | None) -> None:
        folder = RunLayout(Path(run_dir)).stage(stage.name).submitit_folder
        super().__init__(folder=str(folder), max_num_timeout=0)
        self.stage = stage
        params = dict(stage.slurm)
        extra = dict(params.pop("additional_parameters"))
        if after_ids is not None:
            params["dependency"] = f"afterok:{':'.join(after_ids)}"
            extra["kill-on-invalid-dep"] = "yes"
        self.update_parameters(**params, additional_parameters=extra)

    @classmethod
    def affinity(cls) -> int:
        return 2        # renders anywhere (a laptop); submission looks for sbatch itself

    def script(self) -> str:
        """The batch script submitit hands to sbatch for this stage (an array's included)."""
        params = dict(self.parameters)
        if self.stage.array > 1:                # submitit submits one job for an array of one
            params["map_count"] = self.stage.array
        # What submitit's _submit_command writes: _make_submission_file_text(command) calls this
        # with the executor's (for an array, a copy's) parameters and _submitit_command_str.
        return submitit_slurm._make_sbatch_string(command=self._submitit_command_str, folder=self.folder,
                                                  **params)

    def submit_stage(self, run_dir: str) -> str:
        """Submit the stage's supervisor (one per array task); the Slurm job id."""
        attempt = functools.partial(supervise.attempt, run_dir, self.stage.name)
        if self.stage.array > 1:
            return self.submit_array([attempt] * self.stage.array)[0].job_id.split("_")[0]
        return self.submit(attempt).job_id


def _dependency_placeholder(stage: StagePlan) -> list[str] | None:
    return [f"<{name}>" for name in stage.after] or None


class SlurmBackend(Backend):
    name = "slurm"
    supervisor_logs = ("slurm-*.out",)

    def render(self, plan: Plan) -> str:
        out = []
        for stage in plan.stages:
            script = StageExecutor(plan.run_dir, stage, _dependency_placeholder(stage)).script()
            out += [f"### stage {stage.name} (task {stage.task} -> {stage.target})",
                    "# in the batch step, submitit's _submit calls launcher.supervise, which runs:",
                    "#   " + " ".join(supervise.quote_step(stage.command)),
                    *(["# <" + "> <".join(stage.after) + ">: the job ids of those stages, at submission"]
                      if stage.after else []),
                    "# the batch script, as submitted:", script]
        return "\n".join(out)

    def submit(self, run: RunDir, plan: Plan, *, detach: bool, echo) -> int:
        if shutil.which("sbatch") is None:
            raise SlurmUnavailable("sbatch not found: is this a Slurm login node?")
        job_ids: dict[str, str] = {}
        for stage in plan.stages:
            run.stage(stage.name).logs.mkdir(parents=True, exist_ok=True)
            after = [job_ids[d] for d in stage.after] or None
            executor = StageExecutor(str(run.path), stage, after)
            try:
                job_id = executor.submit_stage(str(run.path))
            except submitit_utils.FailedJobError as refused:
                for queued in job_ids.values():   # all or nothing: withdraw the stages already queued
                    StageJob(executor.folder, queued).cancel(check=False)
                raise SlurmUnavailable(
                    f"sbatch refused stage {stage.name}: {str(refused).strip()}"
                    + (f" (withdrew jobs {', '.join(job_ids.values())})" if job_ids else "")) from None
            job_ids[stage.name] = job_id
            run.record(stage.name, f"submission-{job_id}", {
                "kind": "submission", "stage": stage.name, "job_id": job_id, "start": time.time(),
                "script": f"{executor.folder}/{job_id}_submission.sh"})
            echo(f"stage {stage.name}: slurm job {job_id}")
        return exitcodes.OK

    def jobs(self, run: RunDir, plan: Plan) -> dict[str, list[StageJob]]:
        """{stage: submitit job objects of its latest submission, one per array task}."""
        jobs = {}
        for stage in plan.stages:
            subs = run.submissions(stage.name)
            if subs:
                job_id, folder = subs[-1]["job_id"], run.stage(stage.name).submitit_folder
                ids = [f"{job_id}_{i}" for i in stage.shards] if stage.array > 1 else [job_id]
                jobs[stage.name] = [StageJob(folder, i) for i in ids]
        return jobs

    def _states(self, run: RunDir, plan: Plan) -> dict[str, tuple[str, list[str]]]:
        """{stage: (job id, Slurm states of its tasks)}: every job registered, then one query."""
        jobs = self.jobs(run, plan)
        if shutil.which("squeue") is None:
            return {name: (js[0].job_id.split("_")[0], []) for name, js in jobs.items()}
        StageJob.watcher.update()
        return {name: (js[0].job_id.split("_")[0],
                       [StageJob.watcher.get_state(j.job_id, mode="cache") for j in js])
                for name, js in jobs.items()}

    def describe(self, run: RunDir, plan: Plan) -> dict[str, StageState]:
        result = {}
        for name, (job_id, states) in self._states(run, plan).items():
            live = [s.split()[0] for s in states if s.split() and s.split()[0] in ACTIVE]
            if live:
                summary = ", ".join(f"{live.count(s)} {s}" if len(live) > 1 else s for s in sorted(set(live)))
                result[name] = StageState(job_id, summary)
                continue
            attempts = run.attempts(name)
            state = attempts[-1].get("state", "ended") if attempts else "ended"
            if state == "running":      # the ledger says so, but Slurm no longer holds the job
                result[name] = StageState(job_id, "lost", LOST_REASON)
            else:
                result[name] = StageState(job_id, state)
        return result

    def _active(self, run: RunDir, plan: Plan) -> list[str]:
        return [job_id for job_id, states in self._states(run, plan).values()
                if any(s.split() and s.split()[0] in ACTIVE for s in states)]

    def live(self, run: RunDir, plan: Plan) -> str | None:
        active = self._active(run, plan)
        return (f"Slurm still holds job(s) {', '.join(active)} of run {run.run_id}; "
                f"wait for them or `cancel` first") if active else None

    def cancel(self, run: RunDir, plan: Plan) -> str:
        """Running jobs get the warning signal on their step (not a job termination, which
        reaches srun, and srun SIGKILLs its step): the ranks checkpoint and exit 75, and the
        supervisor, seeing `cancel-requested`, records `cancelled`. Pending ones are withdrawn.
        `scancel JOB` remains the way to kill at once."""
        active = self._active(run, plan)
        if active:
            _scancel(f"--signal={plan.warning_signal}", "--state=RUNNING", *active)
            _scancel("--state=PENDING", *active)
        return f"cancelled slurm jobs: {', '.join(active) or 'none active'}"


def _scancel(*args: str) -> None:
    subprocess.run(["scancel", *args], capture_output=True, text=True, timeout=60)


BACKEND = SlurmBackend()

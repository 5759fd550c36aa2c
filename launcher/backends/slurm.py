"""Slurm backend: one generated sbatch script per stage, chained with afterok dependencies.

Why not submitit's executor: it pickles a callable and owns requeueing from rank 0 on its
own signal handler; we need `render` to show the exact script, srun + torchrun across nodes,
and exactly one layer that decides about requeueing (launcher.supervise). So scripts go to
`sbatch` directly and states come from squeue/scontrol.
"""
from __future__ import annotations

import shutil
import subprocess
import time

from .. import atomic, plan as planner, signals
from ..runs import RunDir

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
          "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED"}


class SlurmUnavailable(RuntimeError):
    pass


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise SlurmUnavailable(f"{argv[0]} not found: is this a Slurm login node?")
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def submit(run: RunDir, plan: dict) -> dict[str, str]:
    """sbatch every stage in dependency order; return {stage: job id}."""
    job_ids: dict[str, str] = {}
    for stage in plan["stages"]:
        script = run.stage_dir(stage["name"]) / "job.sbatch"
        atomic.write_text(script, planner.sbatch_script(plan, stage), mode=0o755)
        run.stage(stage["name"]).logs.mkdir(parents=True, exist_ok=True)
        argv = ["sbatch", "--parsable"]
        if stage["after"]:
            argv += [f"--dependency=afterok:{':'.join(job_ids[d] for d in stage['after'])}",
                     "--kill-on-invalid-dep=yes"]
        result = _run(argv + [str(script)], check=False)
        if result.returncode != 0:
            if job_ids:                 # all or nothing: withdraw the stages already queued
                _run(["scancel", *job_ids.values()], check=False)
            raise SlurmUnavailable(f"sbatch refused stage {stage['name']}: {result.stderr.strip()}"
                                   + (f" (withdrew jobs {', '.join(job_ids.values())})" if job_ids else ""))
        job_id = result.stdout.strip().split(";")[0]
        job_ids[stage["name"]] = job_id
        run.record(stage["name"], f"submission-{job_id}", {
            "kind": "submission", "stage": stage["name"], "job_id": job_id, "start": time.time(),
            "argv": argv + [str(script)]})
    return job_ids


def latest_job_ids(run: RunDir, plan: dict) -> dict[str, str]:
    ids = {}
    for stage in plan["stages"]:
        subs = run.submissions(stage["name"])
        if subs:
            ids[stage["name"]] = subs[-1]["job_id"]
    return ids


def squeue_states(job_ids: list[str]) -> dict[str, list[str]]:
    """{job id: [states of it and its array tasks]} for jobs squeue still knows."""
    if not job_ids:
        return {}
    out = _run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%F|%T"], check=False).stdout
    states: dict[str, list[str]] = {}
    for line in out.splitlines():
        if "|" in line:
            job, state = line.strip().split("|", 1)
            states.setdefault(job, []).append(state)
    return states


def job_states(run: RunDir, plan: dict) -> dict[str, tuple[str, str]]:
    """{stage: (job id, state)}; live states from squeue, finished ones from the ledger."""
    ids = latest_job_ids(run, plan)
    try:
        live = squeue_states(list(ids.values()))
    except SlurmUnavailable:
        live = {}
    result = {}
    for stage in plan["stages"]:
        name = stage["name"]
        if name not in ids:
            continue
        states = live.get(ids[name])
        if states:
            summary = ", ".join(f"{states.count(s)} {s}" if len(states) > 1 else s
                                for s in sorted(set(states)))
        else:
            attempts = run.attempts(name)
            summary = attempts[-1].get("state", "ended") if attempts else "ended"
        result[name] = (ids[name], summary)
    return result


def active_jobs(run: RunDir, plan: dict) -> list[str]:
    """Job ids of the run that Slurm still holds (pending, running, requeueing...)."""
    ids = list(latest_job_ids(run, plan).values())
    return [j for j, states in squeue_states(ids).items() if set(states) & ACTIVE]


def cancel(run: RunDir, plan: dict) -> list[str]:
    """Stop every job of the run that Slurm still holds, the gentle way.

    Running jobs get the warning signal on their step (not a job termination, which reaches
    srun, and srun SIGKILLs its step): the ranks checkpoint and exit 75, and the supervisor,
    seeing `cancel-requested`, records `cancelled` and requeues nothing. Pending ones are
    withdrawn. `scancel JOB` remains the way to kill at once.
    """
    active = active_jobs(run, plan)
    if active:
        warning = plan.get("warning_signal", signals.DEFAULT_WARNING)
        _run(["scancel", f"--signal={warning}", "--state=RUNNING", *active], check=False)
        _run(["scancel", "--state=PENDING", *active], check=False)
    return active

"""Spec → plan: per stage, the resources, environment and exact command lines to run.

Pure and deterministic: the same spec, run directory and interpreter give the same plan, and
`render` prints from it exactly what `submit` runs.
"""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import signals, tasks
from .layout import RunLayout
from .spec import JobSpec, StageSpec, format_minutes, processes_per_node

# Filled in by the Slurm supervisor on the first node: its NodeAddr and a free port.
RDZV_PLACEHOLDER = "{rdzv_endpoint}"


@dataclass(frozen=True)
class StagePlan:
    name: str
    task: str
    target: str                      # module:function the task resolves to
    config: dict
    after: list[str]
    array: int
    array_parallelism: int | None
    nodes: int
    processes_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: float | None
    time_minutes: int
    max_restarts: int
    stop_signals: list[str]
    checkpoint: dict
    device: str
    partition: str | None
    env: dict[str, str]
    command: list[str]               # what runs on each node (local: the whole attempt)
    sbatch: list[str] = field(default_factory=list)   # #SBATCH options (slurm backend)

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


def build(spec: JobSpec, run_dir: str, python: str) -> dict:
    """The plan as a JSON-able dict: {run_id, run_dir, backend, python, stages: [...]}."""
    stages = [asdict(stage_plan(spec, spec.stages[name], run_dir, python))
              for name in spec.stage_order()]
    return {"version": 1, "name": spec.name, "run_dir": run_dir, "backend": spec.backend,
            "python": python, "warning_signal": spec.slurm.signal, "stages": stages}


def stage_plan(spec: JobSpec, stage: StageSpec, run_dir: str, python: str) -> StagePlan:
    local = spec.backend == "local"
    nproc = processes_per_node(stage, spec.backend, spec.local)
    nodes = 1 if local else stage.resources.nodes
    if local:
        device = spec.local.device
        max_restarts = spec.local.max_restarts
    else:
        device = "cuda" if stage.resources.gpus_per_node else "cpu"
        max_restarts = spec.slurm.max_restarts
    if stage.max_restarts is not None:
        max_restarts = stage.max_restarts
    env = dict(spec.env)
    env.update({"NFS_RUN_DIR": run_dir, "NFS_STAGE": stage.name})
    plan = StagePlan(
        name=stage.name, task=stage.task, target=_target(stage.task), config=stage.config,
        after=list(stage.after), array=stage.array,
        array_parallelism=stage.array_parallelism or spec.slurm.array_parallelism,
        nodes=nodes, processes_per_node=nproc, gpus_per_node=stage.resources.gpus_per_node,
        cpus_per_task=stage.resources.cpus_per_task, mem_gb=stage.resources.mem_gb,
        time_minutes=stage.resources.time_minutes or spec.slurm.time_minutes,
        max_restarts=max_restarts, stop_signals=signals.stop_signals(spec.slurm.signal),
        checkpoint=dict(stage.checkpoint), device=device,
        partition=stage.partition or spec.slurm.partition, env=env, command=[])
    command = (local_command(plan, run_dir, python) if local
               else slurm_step_command(plan, run_dir, python))
    sbatch = [] if local else sbatch_options(spec, plan, run_dir)
    return StagePlan(**{**asdict(plan), "command": command, "sbatch": sbatch})


def _target(task: str) -> str:
    try:
        return tasks.resolve_target(task)
    except KeyError:
        return task


def entry_command(python: str, run_dir: str, stage: str) -> list[str]:
    return [python, "-m", "launcher.entry", run_dir, stage]


def shielded(python: str, plan: StagePlan) -> list[str]:
    """The prefix that runs torchrun's agent deaf to the stage's stop signals (launcher.shield)."""
    return [python, "-m", "launcher.shield", "--signals", ",".join(plan.stop_signals), "--"]


def local_command(plan: StagePlan, run_dir: str, python: str) -> list[str]:
    """One process runs the entry directly; several run under torchrun (standalone rendezvous)."""
    if plan.processes_per_node == 1:
        return entry_command(python, run_dir, plan.name)
    return shielded(python, plan) + [python, "-m", "torch.distributed.run",
            "--standalone", "--nnodes=1", f"--nproc_per_node={plan.processes_per_node}",
            "-m", "launcher.entry", run_dir, plan.name]


def slurm_step_command(plan: StagePlan, run_dir: str, python: str) -> list[str]:
    """What the supervisor runs: on one node the entry or torchrun itself, in the batch step (srun
    would SIGKILL its step on the SIGTERM of scancel or a time limit; launcher.relay brings the
    step-only signals); across nodes `srun` one torchrun per node (c10d rendezvous on the first)."""
    torchrun = shielded(python, plan) + [
        python, "-m", "torch.distributed.run", f"--nnodes={plan.nodes}",
        f"--nproc_per_node={plan.processes_per_node}", "--rdzv_backend=c10d",
        f"--rdzv_endpoint={RDZV_PLACEHOLDER}", "--rdzv_id=$SLURM_JOB_ID", "--max_restarts=0",
        "-m", "launcher.entry", run_dir, plan.name]
    if plan.nodes == 1:
        return entry_command(python, run_dir, plan.name) if plan.world_size == 1 else torchrun
    srun = ["srun", f"--nodes={plan.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            f"--cpus-per-task={plan.cpus_per_task * plan.processes_per_node}"]
    return srun + torchrun


def sbatch_options(spec: JobSpec, plan: StagePlan, run_dir: str) -> list[str]:
    """The #SBATCH options of a stage; every value was validated to a plain Slurm word."""
    s = spec.slurm
    logs = RunLayout(Path(run_dir)).stage(plan.name).logs
    opts = [f"--job-name={spec.name}.{plan.name}",
            # sbatch reads #SBATCH values itself: a double-quoted path may hold spaces.
            f'--output="{logs}/slurm-%A_%a.out"' if plan.array else f'--output="{logs}/slurm-%j.out"',
            "--open-mode=append",
            f"--nodes={plan.nodes}",
            f"--ntasks-per-node=1",
            f"--cpus-per-task={plan.cpus_per_task * plan.processes_per_node}",
            f"--time={format_minutes(plan.time_minutes)}",
            f"--signal={s.signal}@{s.signal_seconds}",
            "--requeue"]
    if plan.gpus_per_node:
        opts.append(f"--gpus-per-node={plan.gpus_per_node}")
    if plan.mem_gb:
        opts.append(f"--mem={int(plan.mem_gb * 1024)}M")
    if plan.partition:
        opts.append(f"--partition={plan.partition}")
    for flag, value in (("account", s.account), ("qos", s.qos), ("constraint", s.constraint)):
        if value:
            opts.append(f"--{flag}={value}")
    if s.exclusive:
        opts.append("--exclusive")
    if plan.array:
        cap = f"%{plan.array_parallelism}" if plan.array_parallelism else ""
        opts.append(f"--array=0-{plan.array - 1}{cap}")
    opts.extend(s.extra_sbatch)
    return opts


def sbatch_script(plan: dict, stage: dict) -> str:
    """The batch script of one stage: #SBATCH lines, quoted exports, then the supervisor."""
    q = shlex.quote
    lines = ["#!/bin/bash"] + [f"#SBATCH {opt}" for opt in stage["sbatch"]]
    lines += ["", "# Written by `python -m launcher submit`; every value below is shell-quoted.",
              "set -euo pipefail"]
    lines += [f"export {key}={q(value)}" for key, value in sorted(stage["env"].items())]
    step = " ".join(_quote_step_word(word) for word in stage["command"])
    lines += ["",
              "# The supervisor records the attempt in the ledger, fills in {rdzv_endpoint} (NodeAddr",
              "# of the first node and a free port), runs the step, and requeues once when the step",
              "# stopped for a checkpointed preemption or time limit.",
              f"exec {q(plan['python'])} -m launcher.supervise {q(plan['run_dir'])} {q(stage['name'])} -- \\",
              f"    {step}", ""]
    return "\n".join(lines)


def _quote_step_word(word: str) -> str:
    """Quote a step word, leaving the one Slurm variable we use for the shell to expand."""
    if word == "--rdzv_id=$SLURM_JOB_ID":
        return '--rdzv_id="$SLURM_JOB_ID"'
    return shlex.quote(word)

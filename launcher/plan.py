"""Spec → plan: per stage, the resources, environment and exact command lines to run.

Pure and deterministic: the same spec, run directory and interpreter give the same plan, and
`render` prints from it exactly what `submit` runs. The plan is typed (`Plan`, `StagePlan`)
until it is written to plan.json, and typed again when a supervisor reads it back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import signals, tasks
from .heartbeat import COLLECTIVE_TIMEOUT_VARIABLE, HangTimeouts
from .layout import RunLayout
from .spec import JobSpec, StageSpec, processes_per_node

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
    slurm: dict = field(default_factory=dict)   # sbatch parameters, as submitit takes them
    restart_in_allocation: bool = False   # Slurm: a failure is retried in the same allocation first
    hang_timeouts: dict = field(default_factory=dict)   # launcher.heartbeat.HangTimeouts fields

    @property
    def hang(self) -> HangTimeouts:
        """Seconds without progress, per phase, that mean a hang (the supervisors' watch)."""
        return HangTimeouts(**self.hang_timeouts)

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node

    @property
    def shards(self) -> list[int]:
        """The shard indices of the stage: 0..array-1, or just 0 for a stage that is no array."""
        return list(range(self.array)) if self.array else [0]


@dataclass(frozen=True)
class Plan:
    name: str
    run_dir: str
    backend: str                     # "local" or "slurm": picks the module in launcher.backends
    python: str
    warning_signal: str
    stages: list[StagePlan]
    local_max_parallel: int = 0      # parallel array shards of the local backend; 0 = CPUs
    version: int = 1

    def stage(self, name: str) -> StagePlan:
        """The stage called `name` (KeyError naming the stages when there is none)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} (stages: {', '.join(s.name for s in self.stages)})")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        known = {f.name for f in fields(StagePlan)}
        stages = [StagePlan(**{k: v for k, v in s.items() if k in known}) for s in data["stages"]]
        top = {f.name for f in fields(cls)} - {"stages"}
        return cls(stages=stages, **{k: v for k, v in data.items() if k in top})


def load(run_dir: str | Path) -> Plan:
    """The typed plan of a run directory (its plan.json)."""
    return Plan.from_json(json.loads(RunLayout(Path(run_dir)).plan.read_text()))


def build(spec: JobSpec, run_dir: str, python: str) -> Plan:
    stages = [stage_plan(spec, spec.stages[name], run_dir, python) for name in spec.stage_order()]
    return Plan(name=spec.name, run_dir=run_dir, backend=spec.backend, python=python,
                warning_signal=spec.slurm.signal, stages=stages,
                local_max_parallel=spec.local.max_parallel)


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
    hang = HangTimeouts(**stage.hang_timeouts)
    env = dict(spec.env)
    env.update({"NFS_RUN_DIR": run_dir, "NFS_STAGE": stage.name,
                COLLECTIVE_TIMEOUT_VARIABLE: f"{hang.collective_s():g}"})
    plan = StagePlan(
        name=stage.name, task=stage.task, target=_target(stage.task), config=stage.config,
        after=list(stage.after), array=stage.array,
        array_parallelism=stage.array_parallelism or spec.slurm.array_parallelism,
        nodes=nodes, processes_per_node=nproc, gpus_per_node=stage.resources.gpus_per_node,
        cpus_per_task=stage.resources.cpus_per_task, mem_gb=stage.resources.mem_gb,
        time_minutes=stage.resources.time_minutes or spec.slurm.time_minutes,
        max_restarts=max_restarts, stop_signals=signals.stop_signals(spec.slurm.signal),
        checkpoint=dict(stage.checkpoint), device=device,
        partition=stage.partition or spec.slurm.partition, env=env, command=[],
        restart_in_allocation=not local and spec.slurm.restart_in_allocation,
        hang_timeouts=asdict(hang))
    command = (local_command(plan, run_dir, python) if local
               else slurm_step_command(plan, run_dir, python))
    slurm = {} if local else sbatch_parameters(spec, plan, run_dir)
    return StagePlan(**{**asdict(plan), "command": command, "slurm": slurm})


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


def sbatch_parameters(spec: JobSpec, plan: StagePlan, run_dir: str) -> dict:
    """The sbatch parameters of a stage, named as submitit's SlurmExecutor.update_parameters
    takes them; every value was validated to a plain Slurm word. `additional_parameters` holds
    what submitit has no name for, and overrides its defaults (its log paths, its USR2 signal)."""
    s = spec.slurm
    logs = RunLayout(Path(run_dir)).stage(plan.name).logs
    extra: dict = {
        "output": f"{logs}/slurm-%A_%a.out" if plan.array > 1 else f"{logs}/slurm-%j.out",
        "signal": f"{s.signal}@{s.signal_seconds}",
        "requeue": True}
    for option in s.extra_sbatch:
        key, _, value = option[2:].partition("=")
        extra[key] = value or True
    params = {"job_name": f"{spec.name}.{plan.name}", "nodes": plan.nodes, "ntasks_per_node": 1,
              "cpus_per_task": plan.cpus_per_task * plan.processes_per_node,
              "time": plan.time_minutes, "stderr_to_stdout": True, "use_srun": False,
              # The batch shell waits for submitit's python (our supervisor) and must outlive
              # the stop signals Slurm sends the batch step: its end would end the job.
              "setup": [f"trap '' {' '.join(plan.stop_signals)}"],
              "additional_parameters": extra}
    if plan.gpus_per_node:
        params["gpus_per_node"] = plan.gpus_per_node
    if plan.mem_gb:
        params["mem"] = f"{int(plan.mem_gb * 1024)}MB"
    if plan.array_parallelism:
        params["array_parallelism"] = plan.array_parallelism
    for key, value in (("partition", plan.partition), ("account", s.account), ("qos", s.qos),
                       ("constraint", s.constraint)):
        if value:
            params[key] = value
    if s.exclusive:
        params["exclusive"] = True
    return params

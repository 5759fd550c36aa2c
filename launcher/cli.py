"""`python -m launcher`: submit, validate, render, status, logs, cancel, resume, report, list.

Imports neither torch nor DeepSpeed nor the workload, so every command answers at once on a
login node.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from . import exitcodes, plan as planner, runlock
from .backends import local as local_backend
from .runs import RunDir, find_run
from .spec import SpecInvalid, load_spec

DEFAULT_ROOT = os.environ.get("NFS_RUN_ROOT", "runs")


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="YAML job spec, e.g. jobs/stylenerf_8gpu.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set stages.train.config.batch_per_gpu=2")
    p.add_argument("--backend", choices=("local", "slurm"), help="override the spec's backend")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Turn YAML job specs into Slurm or local torchrun jobs, and operate them.")
    top.add_argument("--run-root", default=DEFAULT_ROOT,
                     help=f"where runs live (default: $NFS_RUN_ROOT or {DEFAULT_ROOT!r})")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("submit", help="validate a spec, create a run directory, start its stages")
    _spec_args(p)
    p.add_argument("--dry-run", action="store_true", help="print what would run; submit nothing")
    p.add_argument("--detach", action="store_true", help="local backend: run in the background")
    p = sub.add_parser("validate", help="check a spec; exit 2 with file:line: field: message")
    _spec_args(p)
    p = sub.add_parser("render", help="print exactly what submit would run (scripts, commands)")
    _spec_args(p)
    p = sub.add_parser("status", help="stages, job ids, states, attempts, checkpoint step, progress")
    p.add_argument("run", nargs="?", help="run id or directory (default: all runs, newest first)")
    p = sub.add_parser("logs", help="print a stage's logs")
    p.add_argument("run")
    p.add_argument("--stage")
    p.add_argument("--rank", type=int)
    p.add_argument("--follow", "-f", action="store_true")
    p = sub.add_parser("cancel", help="stop a run; nothing is requeued after this")
    p.add_argument("run")
    p = sub.add_parser("resume", help="restart every unfinished stage of a run")
    p.add_argument("run")
    p.add_argument("--fresh-start", metavar="STAGE", action="append", default=[],
                   help="let STAGE start over from step 0 when none of its checkpoints is usable")
    p.add_argument("--detach", action="store_true", help="local backend: run in the background")
    p = sub.add_parser("report", help="write RUN/report.html: stages, attempt timeline, metrics plots, ETA")
    p.add_argument("run")
    sub.add_parser("list", help="runs under the run root")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SpecInvalid as invalid:
        for problem in invalid.problems:
            print(problem, file=sys.stderr)
        return exitcodes.BAD_SPEC
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.BAD_SPEC
    except runlock.LockHeld as held:     # two supervisors raced for one run; the second stops
        print(f"error: {held}", file=sys.stderr)
        return exitcodes.FAILED
    except RuntimeError as exc:         # e.g. sbatch refused a job, Slurm not reachable
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.FAILED


def _load(args) -> tuple:
    spec = load_spec(args.spec, args.overrides, backend=args.backend)
    return spec, sys.executable


def cmd_validate(args) -> int:
    spec, _ = _load(args)
    print(f"{args.spec}: ok ({len(spec.stages)} stage(s): {', '.join(spec.stage_order())}; "
          f"backend {spec.backend})")
    return exitcodes.OK


def cmd_render(args) -> int:
    spec, python = _load(args)
    run_dir = str(Path(spec.run_root).expanduser().resolve() / f"{spec.name}-RUN_ID")
    print(render(planner.build(spec, run_dir, python), spec.local.max_parallel))
    return exitcodes.OK


def render(plan: dict, max_parallel: int = 0) -> str:
    out = []
    for stage in plan["stages"]:
        out.append(f"### stage {stage['name']} (task {stage['task']} -> {stage['target']})")
        if plan["backend"] == "slurm":
            out.append(f"# sbatch {stage['name']}.sbatch" + (
                f" --dependency=afterok:<job ids of {','.join(stage['after'])}>" if stage["after"] else ""))
            out.append(planner.sbatch_script(plan, stage))
        else:
            shards = f"{stage['array']} shards, " if stage["array"] else ""
            out.append(f"# local: {shards}{stage['processes_per_node']} process(es); "
                       f"after: {', '.join(stage['after']) or '-'}; restarts <= {stage['max_restarts']}")
            out.append(" ".join(planner.shlex.quote(w) for w in stage["command"]))
        out.append("")
    return "\n".join(out)


def cmd_submit(args) -> int:
    spec, python = _load(args)
    if args.dry_run:
        return cmd_render(args)
    run = RunDir.create(Path(spec.run_root), spec.name)
    run.write_spec(yaml.safe_dump(spec.raw, sort_keys=False))
    plan = planner.build(spec, str(run.path), python)
    plan["local_max_parallel"] = spec.local.max_parallel
    run.write_plan(plan)
    print(f"run {run.run_id}\ndirectory {run.path}")
    return _start(run, plan, python, detach=args.detach)


def _start(run: RunDir, plan: dict, python: str, detach: bool) -> int:
    if plan["backend"] == "slurm":
        from .backends import slurm
        for stage, job_id in slurm.submit(run, plan).items():
            print(f"stage {stage}: slurm job {job_id}")
        return exitcodes.OK
    if detach:
        pid = local_backend.start_detached(run, python)
        print(f"local supervisor pid {pid} (log: {run.layout.supervisor_log})")
        return exitcodes.OK
    return local_backend.LocalSupervisor(run, echo=lambda m: print(m, flush=True)).run_all()


def _find(args) -> RunDir:
    return find_run(args.run, [Path(args.run_root).expanduser().resolve()])


def cmd_status(args) -> int:
    from .status import run_table, runs_overview
    if args.run:
        print(run_table(_find(args)))
    else:
        print(runs_overview(Path(args.run_root).expanduser().resolve()))
    return exitcodes.OK


def cmd_list(args) -> int:
    from .status import runs_overview
    print(runs_overview(Path(args.run_root).expanduser().resolve()))
    return exitcodes.OK


def cmd_logs(args) -> int:
    from .status import log_files
    run = _find(args)
    files = log_files(run, args.stage, args.rank)
    if not files:
        print("no logs yet", file=sys.stderr)
        return exitcodes.FAILED
    for f in files:
        print(f"==> {f} <==")
        sys.stdout.write(f.read_text(errors="replace"))
    if args.follow:
        _follow(files[-1])
    return exitcodes.OK


def _follow(path: Path) -> None:
    with open(path, errors="replace") as f:
        f.seek(0, os.SEEK_END)
        try:
            while True:
                line = f.readline()
                if line:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass


def cmd_cancel(args) -> int:
    run = _find(args)
    run.request_cancel()
    plan = run.read_plan()
    if plan["backend"] == "slurm":
        from .backends import slurm
        cancelled = slurm.cancel(run, plan)
        print(f"cancelled slurm jobs: {', '.join(cancelled) or 'none active'}")
    else:
        lock = local_backend.supervisor_lock(run)
        if lock.is_held():
            print(f"cancel requested: the local supervisor ({runlock.describe(lock.holder())}) "
                  f"stops its attempts within a second; ranks checkpoint, nothing restarts")
        else:
            print("no local supervisor is running")
    return exitcodes.OK


def cmd_resume(args) -> int:
    run = _find(args)
    plan = run.read_plan()
    unknown = sorted(set(args.fresh_start) - {s["name"] for s in plan["stages"]})
    if unknown:
        print(f"error: --fresh-start: no stage {', '.join(unknown)} in run {run.run_id}", file=sys.stderr)
        return exitcodes.BAD_SPEC
    refusal = _live_attempts(run, plan)
    if refusal:
        print(f"error: not resumed: {refusal}", file=sys.stderr)
        return exitcodes.FAILED
    run.clear_cancel()
    for stage in args.fresh_start:
        run.allow_fresh_start(stage)
    print(f"resuming run {run.run_id}")
    return _start(run, plan, plan["python"], detach=args.detach)


def _live_attempts(run: RunDir, plan: dict) -> str | None:
    """Why `run` cannot be resumed now (something of it is still live), or None."""
    if plan["backend"] == "slurm":
        from .backends import slurm
        active = slurm.active_jobs(run, plan)
        return (f"Slurm still holds job(s) {', '.join(active)} of run {run.run_id}; "
                f"wait for them or `cancel` first") if active else None
    lock = local_backend.supervisor_lock(run)
    if lock.is_held():
        return f"run {run.run_id} is held by the local supervisor, {runlock.describe(lock.holder())}"
    return None


def cmd_report(args) -> int:
    run = _find(args)
    try:
        from .report import write_report       # matplotlib, only for this command
    except ImportError as missing:
        print(f"error: the report needs matplotlib ({missing}); pip install 'nerffacespeech[report]'",
              file=sys.stderr)
        return exitcodes.FAILED
    print(f"report {write_report(run)}")
    return exitcodes.OK


COMMANDS = {"submit": cmd_submit, "validate": cmd_validate, "render": cmd_render,
            "status": cmd_status, "logs": cmd_logs, "cancel": cmd_cancel, "resume": cmd_resume,
            "report": cmd_report, "list": cmd_list}

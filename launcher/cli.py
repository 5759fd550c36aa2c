"""`python -m launcher`: submit, validate, render, status, logs, cancel, resume, report, list.

Imports neither torch nor DeepSpeed, so every command answers at once on a login node; spec
validation loads the workload's task checks by entry point (no torch either). Each command talks
to the run's backend only through launcher.backends.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from . import backends, exitcodes, plan as planner, runlock
from .runs import RunDir, find_run
from .spec import JobSpec, SpecInvalid, load_spec

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


def _load(args) -> JobSpec:
    return load_spec(args.spec, args.overrides, backend=args.backend)


def cmd_validate(args) -> int:
    spec = _load(args)
    print(f"{args.spec}: ok ({len(spec.stages)} stage(s): {', '.join(spec.stage_order())}; "
          f"backend {spec.backend})")
    return exitcodes.OK


def cmd_render(args) -> int:
    """Print what submit would run. A spec that only the task checks refuse (weights missing on
    this machine, say) is still rendered, its problems listed above the script."""
    try:
        spec, problems = _load(args), []
    except SpecInvalid as invalid:
        spec = load_spec(args.spec, args.overrides, backend=args.backend, check_tasks=False)
        problems = invalid.problems
    run_dir = str(Path(spec.run_root).expanduser().resolve() / f"{spec.name}-RUN_ID")
    plan = planner.build(spec, run_dir, sys.executable)
    if problems:
        print(f"# submit refuses this spec as it stands here ({len(problems)} problem(s)):")
        print("\n".join(f"#   {problem}" for problem in problems) + "\n")
    print(backends.for_plan(plan).render(plan))
    return exitcodes.OK


def cmd_submit(args) -> int:
    spec = _load(args)
    if args.dry_run:
        return cmd_render(args)
    run = RunDir.create(Path(spec.run_root), spec.name)
    run.write_spec(yaml.safe_dump(spec.raw, sort_keys=False))
    plan = planner.build(spec, str(run.path), sys.executable)
    run.write_plan(plan.to_json())
    print(f"run {run.run_id}\ndirectory {run.path}")
    return _start(run, plan, detach=args.detach)


def _start(run: RunDir, plan: planner.Plan, detach: bool) -> int:
    return backends.for_plan(plan).submit(run, plan, detach=detach, echo=lambda m: print(m, flush=True))


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
    run = _find(args)
    plan = planner.load(run.path)
    names = [s.name for s in plan.stages]
    if args.stage is not None and args.stage not in names:
        print(f"error: run {run.run_id} has no stage {args.stage!r} (stages: {', '.join(names)})",
              file=sys.stderr)
        return exitcodes.BAD_SPEC
    backend = backends.for_plan(plan)
    files = [f for name in ([args.stage] if args.stage else names)
             for f in backend.log_files(run, name, args.rank)]
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
    plan = planner.load(run.path)
    backend = backends.for_plan(plan)
    if backend.live(run, plan) is None:
        states = ", ".join(f"{name} {st.state}" for name, st in backend.describe(run, plan).items())
        print(f"run {run.run_id} is not running ({states or 'nothing started'}): nothing to cancel")
        return exitcodes.OK
    run.request_cancel()
    print(backend.cancel(run, plan))
    return exitcodes.OK


def cmd_resume(args) -> int:
    run = _find(args)
    plan = planner.load(run.path)
    unknown = sorted(set(args.fresh_start) - {s.name for s in plan.stages})
    if unknown:
        print(f"error: --fresh-start: no stage {', '.join(unknown)} in run {run.run_id}", file=sys.stderr)
        return exitcodes.BAD_SPEC
    live = backends.for_plan(plan).live(run, plan)
    if live:
        print(f"error: not resumed: {live}", file=sys.stderr)
        return exitcodes.FAILED
    run.clear_cancel()
    for stage in args.fresh_start:
        run.allow_fresh_start(stage)
    print(f"resuming run {run.run_id}")
    return _start(run, plan, detach=args.detach)


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

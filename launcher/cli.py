"""`python -m launcher`: submit, validate, render, status, logs, cancel, resume, report, list.

A thin layer over `launcher.api`: each command parses its arguments, makes one API call and
prints. Imports neither torch nor DeepSpeed, so every command answers at once on a login node;
spec validation loads the workload's task checks by entry point (no torch either).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import api, exitcodes, progress, runlock
from .spec import SpecInvalid


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="YAML job spec, e.g. jobs/stylenerf_8gpu.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set stages.train.config.batch_per_gpu=2")
    p.add_argument("--backend", choices=("local", "slurm"), help="override the spec's backend")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Turn YAML job specs into Slurm or local torchrun jobs, and operate them.")
    top.add_argument("--run-root", help=f"where runs live (default: $NFS_RUN_ROOT or {api.DEFAULT_RUN_ROOT!r})")
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
    p.add_argument("--watch", nargs="?", type=float, const=5.0, metavar="SECONDS",
                   help="RUN: show the table again every SECONDS (default 5) until nothing of the run is live")
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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a stage's resources first, e.g. --set stages.train.resources.nodes=2: "
                        "training resumes on the new world size")
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
    except (FileNotFoundError, api.UnknownStage) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.BAD_SPEC
    except runlock.LockHeld as held:     # two supervisors raced for one run; the second stops
        print(f"error: {held}", file=sys.stderr)
        return exitcodes.FAILED
    except RuntimeError as exc:         # e.g. sbatch refused a job, Slurm not reachable, not resumable
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.FAILED


def cmd_validate(args) -> int:
    spec = api.validate(args.spec, args.overrides, args.backend)
    print(f"{args.spec}: ok ({len(spec.stages)} stage(s): {', '.join(spec.stage_order())}; "
          f"backend {spec.backend})")
    return exitcodes.OK


def cmd_render(args) -> int:
    print(api.render(args.spec, args.overrides, args.backend))
    return exitcodes.OK


def cmd_submit(args) -> int:
    if args.dry_run:
        api.validate(args.spec, args.overrides, args.backend)
        return cmd_render(args)
    run = api.submit(args.spec, args.overrides, args.backend, detach=args.detach, echo=progress.Console())
    return run.exit_code


def _open(args) -> api.Run:
    return api.open_run(args.run, args.run_root)


def cmd_status(args) -> int:
    if not args.run:
        print(api.overview(args.run_root))
    elif args.watch is None:
        print(_open(args).table())
    else:
        _watch(_open(args), args.watch)
    return exitcodes.OK


def _watch(run: api.Run, seconds: float) -> None:
    """`status RUN --watch`: the table every `seconds`, redrawn in place on a terminal, one after
    another elsewhere; the last one once nothing of the run is live (or on Ctrl-C)."""
    redraw = "\033[H\033[J" if sys.stdout.isatty() else ""
    try:
        while True:
            live = run.live()
            print(f"{redraw}{run.table()}\n{time.strftime('%H:%M:%S')} "
                  f"{live or 'nothing of the run is live: final'}\n", flush=True)
            if live is None:
                return
            time.sleep(seconds)
    except KeyboardInterrupt:
        pass


def cmd_list(args) -> int:
    print(api.overview(args.run_root))
    return exitcodes.OK


def cmd_logs(args) -> int:
    files = _open(args).logs(args.stage, args.rank)
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
    print(_open(args).cancel())
    return exitcodes.OK


def cmd_resume(args) -> int:
    return _open(args).resume(args.fresh_start, detach=args.detach, echo=progress.Console(),
                              overrides=args.overrides).exit_code


def cmd_report(args) -> int:
    run = _open(args)
    try:
        from .report import write_report       # matplotlib, only for this command
    except ImportError as missing:
        print(f"error: the report needs matplotlib ({missing}); pip install 'nerffacespeech[report]'",
              file=sys.stderr)
        return exitcodes.FAILED
    print(f"report {write_report(run.dir)}")
    return exitcodes.OK


COMMANDS = {"submit": cmd_submit, "validate": cmd_validate, "render": cmd_render,
            "status": cmd_status, "logs": cmd_logs, "cancel": cmd_cancel, "resume": cmd_resume,
            "report": cmd_report, "list": cmd_list}

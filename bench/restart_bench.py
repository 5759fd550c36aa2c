"""After a rank crashes on Slurm: how long until training steps again, restarted inside the
allocation (the default) or requeued (`slurm.restart_in_allocation: false`).

On the local Slurm cluster (slurm/local-cluster/start.sh): the toy training task on 2 CPU ranks
in one job; once it has committed a checkpoint, rank 1 is SIGKILLed (a crash, not a stop). The
time is from the kill to the first metrics line of the next attempt (a step done after the
restore; the next attempt's ledger start is given too). Prints a table and writes
bench/results/restart-<accel>.json.

    .venv/bin/python bench/restart_bench.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report

TOY = "launcher.diagnose_train:main"


def spec(name: str, in_allocation: bool) -> dict:
    return {"name": name, "backend": "slurm", "run_root": "runs",
            "slurm": {"partition": "debug", "time": "10", "max_restarts": 2,
                      "restart_in_allocation": in_allocation},
            "stages": {"train": {"task": TOY, "resources": {"tasks_per_node": 2, "cpus_per_task": 1},
                                 "checkpoint": {"every_steps": 5, "keep_last": 2},
                                 "config": {"steps": 200, "sleep_per_step": 0.1}}}}


def rank_pid(run_dir: Path, rank: int) -> int | None:
    """The pid of the training process with RANK=`rank` of this run (from /proc)."""
    needles = {f"NFS_RUN_DIR={run_dir}".encode(), f"RANK={rank}".encode()}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = set(Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"))
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needles <= environ and b"launcher.entry" in cmdline:
            return int(entry)
    return None


def metrics(run_dir: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run_dir / "stages/train/metrics.jsonl").read_text().splitlines()
                if line.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def crash_to_next_step(workdir: Path, in_allocation: bool) -> dict:
    """Submit, crash rank 1 after the first checkpoint, time until the next attempt steps."""
    from launcher import api
    run = api.submit(spec("restart-bench", in_allocation), overrides={"run_root": str(workdir / "runs")})
    checkpoints = run.path / "stages/train/checkpoints"
    wait_for(lambda: any(checkpoints.glob("step-*")) and rank_pid(run.path, 1), 300, "a checkpoint")
    killed_at = time.time()
    os.kill(rank_pid(run.path, 1), signal.SIGKILL)
    wait_for(lambda: len(run.attempts("train")) >= 2, 600, "a second attempt")
    first_line = wait_for(lambda: next((r for r in metrics(run.path) if r["time"] > killed_at), None),
                          600, "a step of the next attempt")
    first, second = run.attempts("train")[:2]
    run.cancel()
    run.wait(timeout=120)
    return {"seconds": first_line["time"] - killed_at, "resumed_at_step": first_line["step"],
            "attempt_started_after": second["start"] - killed_at,
            "first_attempt": first["state"], "same_job": first["job_id"] == second["job_id"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = str(report.REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, in_allocation in (("in-allocation restart", True), ("requeue", False)):
            runs = [crash_to_next_step(Path(tmp) / f"{mode.split()[0]}-{i}", in_allocation)
                    for i in range(args.repeats)]
            results[mode] = {"median_seconds": statistics.median(r["seconds"] for r in runs),
                             "median_attempt_started_after": statistics.median(r["attempt_started_after"]
                                                                               for r in runs),
                             "runs": runs}
    rows = [(mode, f"{r['median_seconds']:.1f} s", ", ".join(f"{x['seconds']:.1f}" for x in r["runs"]),
             f"{r['median_attempt_started_after']:.1f} s", r["runs"][0]["first_attempt"],
             "yes" if r["runs"][0]["same_job"] else "no")
            for mode, r in results.items()]
    print(report.table(rows, ("after a rank's crash", "to the next step (median)", "each run",
                              "next attempt recorded (median)", "ledger", "same job")))
    report.write("restart", {**report.metadata(vars(args)), "results": results}, args.output)


if __name__ == "__main__":
    report.run_and_exit(main)

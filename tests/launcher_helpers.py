"""Helpers for launcher tests: write a spec, run the real CLI, read a run directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def torchrun(ranks: int, script: Path | str, *args: object, timeout: float = 300) -> None:
    """`script args` on `ranks` CPU processes under torchrun (gloo, this host), one thread each;
    fails the test with the ranks' output when they exit non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(ranks), str(script), *map(str, args)],
                          env=env, timeout=timeout, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def training_spec(name: str, task: str, config: dict, every_steps: int = 1000, restarts: int = 0,
                  env: dict | None = None) -> str:
    """A one-stage spec (JSON, which is YAML): `task` as stage `train` on 2 CPU processes under
    the local backend, checkpointing every `every_steps`, restarted up to `restarts` times."""
    spec = {"name": name, "run_root": "runs", "local": {"device": "cpu", "max_restarts": restarts},
            **({"env": env} if env else {}),
            "stages": {"train": {"task": task, "resources": {"tasks_per_node": 2},
                                 "checkpoint": {"every_steps": every_steps, "keep_last": 2}, "config": config}}}
    return json.dumps(spec, indent=2)


def launcher(*args: str, cwd: Path, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"launcher {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def run_dir_from(output: str) -> Path:
    for line in output.splitlines():
        if line.startswith("directory "):
            return Path(line.split(" ", 1)[1])
    raise AssertionError(f"no run directory in output:\n{output}")


def processed_items(run: Path, stage: str) -> list[int]:
    """Every item any shard processed, with repeats, from the shards' processing logs."""
    items = []
    for log in (run / "stages" / stage / "items").glob("processed-by-shard-*.log"):
        items += [json.loads(line)["item"] for line in log.read_text().splitlines()]
    return sorted(items)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def supervisor_running(run: Path) -> bool:
    """True while a local supervisor holds the run (its kernel lock; a dead one never does)."""
    from launcher.backends.local import supervisor_lock
    from launcher.runs import RunDir
    return supervisor_lock(RunDir(run)).is_held()


def slurm_items_pipeline(name: str, items: int) -> dict:
    """A Slurm spec (as a dict): a 2-shard `diagnose.items` array of `items` items, then a stage after it."""
    return {"name": name, "backend": "slurm", "run_root": "runs", "slurm": {"partition": "debug", "time": "5"},
            "stages": {"shards": {"task": "diagnose.items", "array": 2, "config": {"items": items}},
                       "after": {"task": "diagnose.items", "after": ["shards"], "config": {"items": 1}}}}

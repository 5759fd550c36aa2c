"""Chaos: a 2-rank training run interrupted at seeded random steps, in every way a cluster
interrupts jobs, ends with parameters bitwise equal to an uninterrupted run's.

The run is submitted with `python -m launcher submit --backend local`; its supervisor restarts
each interrupted attempt. The driver plays the cluster: a warning signal to every rank, a
signal to one rank only, SIGKILL while a checkpoint is being written, SIGKILL without warning.
After every interruption, and while waiting, every visible checkpoint must verify.
"""
import json
import random
import signal
import time
from pathlib import Path

import psutil
import pytest

from launcher.runtime.checkpoint import committed_steps, step_dirname, verify
from tests import launcher_helpers
from tests.launcher_helpers import launcher, run_dir_from, training_spec, wait_until, write_spec

STEPS = 40
SEED = 20261124
PLAN = ("warn_all_ranks", "kill_during_checkpoint_write", "term_one_rank", "kill_without_warning",
        "warn_one_rank")
VARIANTS = {"ddp": {"engine": "ddp"},
            "zero2": {"engine": "deepspeed", "zero_stage": 2},
            "zero3": {"engine": "deepspeed", "zero_stage": 3}}


def spec_for(name: str, config: dict) -> str:
    return training_spec(name, "launcher.diagnose_train:main", {"steps": STEPS, **config}, every_steps=5, restarts=10)


class Run:
    """A submitted run seen from outside: its attempts, worker processes, metrics and checkpoints."""

    def __init__(self, path: Path):
        self.path = path
        self.checkpoints = path / "stages" / "train" / "checkpoints"

    def attempts(self) -> list[dict]:
        folder = self.path / "ledger" / "train"
        records = [json.loads(p.read_text()) for p in folder.glob("shard-0-attempt-*.json")]
        return sorted(records, key=lambda r: r["attempt"])

    def current_attempt(self) -> dict | None:
        attempts = self.attempts()
        return attempts[-1] if attempts and attempts[-1]["end"] is None else None

    def attempt_pid(self) -> int | None:
        """PID (and process group) of the running attempt's top process."""
        attempt = self.current_attempt()
        return int(attempt["job_id"].split(":")[1]) if attempt else None

    def workers(self) -> dict[int, psutil.Process]:
        """Rank → process of the running attempt's `launcher.entry` workers."""
        pid = self.attempt_pid()
        if pid is None:
            return {}
        try:
            tree = psutil.Process(pid).children(recursive=True)
            return {int(p.environ()["RANK"]): p for p in tree if "launcher.entry" in p.cmdline()}
        except (psutil.NoSuchProcess, KeyError):
            return {}

    def metrics(self) -> list[dict]:
        path = self.path / "stages" / "train" / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def step_since(self, since: float) -> int:
        """The newest step logged after `since` (0 if none): progress of the current attempt."""
        return max([m["step"] for m in self.metrics() if m["time"] > since], default=0)

    def keep_last(self) -> int:
        """The stage's retention: how many newest checkpoints stay visible."""
        plan = json.loads((self.path / "plan.json").read_text())
        return next(s["checkpoint"]["keep_last"] for s in plan["stages"] if s["name"] == "train")

    def supervisor_running(self) -> bool:
        return launcher_helpers.supervisor_running(self.path)


def assert_visible_checkpoints_complete(run: Run) -> None:
    """Every visible step folder verifies. A folder may leave view while it is being checked only
    as retention's: then `keep_last` newer ones are committed (they stay until newer ones come)."""
    for step in committed_steps(run.checkpoints):
        folder = run.checkpoints / step_dirname(step)
        problems = verify(folder)
        if problems:
            newer = [s for s in committed_steps(run.checkpoints) if s > step]
            assert not folder.exists() and len(newer) >= run.keep_last(), \
                f"visible but incomplete: {folder}: {problems} (newer: {newer})"


def assert_latest_names_a_visible_checkpoint(run: Run) -> None:
    """`latest`, once written, names a visible folder. Race-free: retention removes the folder it
    named only `keep_last` (2) commits after it moved on, and commits here are over a second apart."""
    latest = run.checkpoints / "latest"
    try:
        named = latest.read_text().strip()
    except FileNotFoundError:
        return                                       # nothing committed yet
    assert (run.checkpoints / named).is_dir(), f"latest names {named!r}, which is not visible"


def wait_checking(run: Run, predicate, timeout: float, what: str):
    def check_then_test():
        assert_visible_checkpoints_complete(run)
        assert_latest_names_a_visible_checkpoint(run)
        return predicate()
    return wait_until(check_then_test, timeout, what, interval=0.05)


def interrupt(run: Run, kind: str, rng: random.Random) -> None:
    workers = run.workers()
    if kind == "warn_all_ranks":
        for process in workers.values():
            process.send_signal(signal.SIGUSR2)
    elif kind == "term_one_rank":
        workers[1].send_signal(signal.SIGTERM)
    elif kind == "warn_one_rank":
        workers[0].send_signal(signal.SIGUSR2)
    else:
        if kind == "kill_during_checkpoint_write":
            wait_checking(run, lambda: list(run.checkpoints.glob(".step-*.tmp-*")), 60, "a checkpoint write")
            time.sleep(rng.uniform(0.0, 0.5))
        kill_every_process_of(run)


def kill_every_process_of(run: Run) -> None:
    """SIGKILL the attempt's whole process tree, as a node failure or Slurm's cgroup kill would.

    Not just its process group: torchrun starts its workers in sessions of their own.
    """
    top = psutil.Process(run.attempt_pid())
    for process in [top, *top.children(recursive=True)]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def final_digest(run_path: Path) -> str:
    return json.loads((run_path / "stages" / "train" / "final.json").read_text())["digest"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_interrupted_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, variant):
    config = VARIANTS[variant]
    reference = launcher("submit", str(write_spec(tmp_path, spec_for("reference", config), "reference.yaml")),
                         cwd=tmp_path, check=True)
    expected = final_digest(run_dir_from(reference.stdout))

    slow = {**config, "sleep_per_step": 0.25, "checkpoint_pause": 1.0}
    submitted = launcher("submit", str(write_spec(tmp_path, spec_for("chaos", slow), "chaos.yaml")), "--detach",
                         cwd=tmp_path, check=True)
    run = Run(run_dir_from(submitted.stdout))
    rng = random.Random(SEED)
    targets = sorted(rng.sample(range(5, STEPS - 4), len(PLAN)))
    resume_points, attempt_ended = [], 0.0
    for kind, target in zip(PLAN, targets):
        wait_checking(run, lambda: run.step_since(attempt_ended) >= target and len(run.workers()) == 2, 180,
                      f"step {target} before {kind}")
        attempt = run.current_attempt()["attempt"]
        interrupt(run, kind, rng)
        workers = list(run.workers().values())
        wait_checking(run, lambda: run.attempts()[attempt]["end"] is not None, 120, f"the end of attempt {attempt}")
        wait_until(lambda: not any(w.is_running() for w in workers), 30, f"attempt {attempt}'s workers to exit")
        attempt_ended = time.time()
        resume_points.append(max(committed_steps(run.checkpoints), default=0))
    wait_checking(run, lambda: not run.supervisor_running(), 300, "the run to finish")

    assert final_digest(run.path) == expected
    attempts = run.attempts()
    assert [a["state"] for a in attempts] == ["continue"] * len(PLAN) + ["completed"]
    signals = {a["attempt"]: (a["exit_code"], a["signal"]) for a in attempts}
    assert signals[0] == (75, "SIGUSR2") and signals[4] == (75, "SIGUSR2")   # rank 0 records its signal
    assert signals[2][0] == 75                                  # only rank 1 got SIGTERM; both stopped
    for attempt, resumed in zip(attempts[1:], resume_points):
        first = min(m["step"] for m in run.metrics() if m["time"] > attempt["start"])
        assert first == resumed + 1, f"attempt {attempt['attempt']} did not resume from step {resumed}"
    assert list((run.checkpoints / "quarantine").glob("step-*.tmp-*")), "no kill hit a checkpoint write"

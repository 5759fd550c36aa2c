"""Heartbeats and the hang rule: each rank says where it is; a supervisor notices when none moves.

A rank on the step loop keeps one small JSON file (`StageLayout.heartbeat`: rank, host, pid,
step, phase, time), replaced by rename at most every `Heartbeat.interval_s` seconds and at once
when its phase changes; the step loop's only cost is a clock read per step. The supervisor reads
them (`HangWatch.check`): when no rank has made progress for its phase's budget (`launching`
from the rank's start until a step-loop task (`on_step_loop`) builds its loop: imports,
rendezvous, model set-up; for other tasks the import and then their rendezvous, if any; `starting` until the first step ends, `saving` during a checkpoint
save, `evaluating` during a task's evaluation, `step` otherwise, `finished` after the final
record: a rank that does not exit), the attempt hangs. Each rank also keeps the mean of its last
steps' own work (the step's time outside the stop vote), from which `stragglers` names a rank the
others keep waiting for. No torch here: the supervisors and `status` import this.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import statistics
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, MutableMapping

LAUNCHING, STARTING, STEP, SAVING, EVALUATING, FINISHED = (
    "launching", "starting", "step", "saving", "evaluating", "finished")
DUMP_SIGNAL = "QUIT"        # faulthandler dumps every thread's stack on it; no stop signal collides
# A straggler: over its last BUSY_WINDOW steps (at least STRAGGLER_MIN_STEPS), its own work per step
# is at least STRAGGLER_RATIO times the other ranks' median and STRAGGLER_MIN_EXCESS_S longer.
BUSY_WINDOW = 8
STRAGGLER_MIN_STEPS = 4
STRAGGLER_RATIO = 2.0
STRAGGLER_MIN_EXCESS_S = 0.05
COLLECTIVE_TIMEOUT_VARIABLE = "NFS_COLLECTIVE_TIMEOUT_S"   # the plan sets it; distributed.init reads it
HEARTBEAT_VARIABLE = "NFS_HEARTBEAT"       # launcher.entry names this rank's heartbeat file in it
COLLECTIVE_MARGIN_S = 60.0  # a derived collective timeout outlasts every hang budget by this much
# Without a spec hang_timeout a step may take STEP_FACTOR times the measured step time (the mean of
# the last BUSY_WINDOW steps), and never less than STEP_FLOOR_S.
STEP_FACTOR = 20.0
STEP_FLOOR_S = 300.0


@dataclass(frozen=True)
class HangTimeouts:
    """Seconds without progress that mean a hang, per phase (the spec's hang_timeout fields)."""
    step: float = 0.0           # 0: derived from the measured step time (step_budget)
    start: float = 1800.0       # launch to the loop, and again restore and the first step (compilation,
                                # CUDA graph capture)
    save: float = 1800.0        # a blocking checkpoint save
    evaluate: float = 3600.0    # a task's evaluation inside `StepLoop.evaluating()` (FID, samples)
    collective: float = 0.0     # the spec's collective_timeout; 0: derived (collective_s)

    def step_budget(self, step_s: float | None) -> float:
        """The spec's hang_timeout, else STEP_FACTOR times the measured step time, at least
        STEP_FLOOR_S (and the floor alone before any step was measured)."""
        if self.step:
            return self.step
        return max(STEP_FLOOR_S, STEP_FACTOR * (step_s or 0.0))

    def budget(self, phase: str, step_s: float | None = None) -> float:
        return {LAUNCHING: self.start, STARTING: self.start, SAVING: self.save,
                EVALUATING: self.evaluate}.get(phase, self.step_budget(step_s))

    def describe_budget(self, phase: str) -> str:
        """The budget in words without a measured time (the loop guard compares hang texts)."""
        if phase in (LAUNCHING, STARTING, SAVING, EVALUATING) or self.step:
            return f"budget {self.budget(phase):.0f} s"
        return f"budget {STEP_FACTOR:g}x its step time, at least {STEP_FLOOR_S:.0f} s"

    def collective_s(self) -> float:
        """How long one collective may wait for its peers (the process groups' timeout): the spec's
        value, else the longest phase budget plus a margin, so that a rank waiting for an
        evaluation or a save is never cut short and the hang watch (which dumps stacks) acts first;
        the timeout is the backstop where nothing watches (tasks off the step loop, a lost supervisor)."""
        return self.collective or max(self.step_budget(None), self.start, self.save, self.evaluate) \
            + COLLECTIVE_MARGIN_S


def on_step_loop(task: Callable) -> Callable:
    """Marks a task that runs the step loop (launcher.runtime.loop): its ranks are watched from
    their launch, so a rank stuck in an import, the rendezvous or the model's set-up is a hang.
    Other tasks are watched only until their module is imported (they have no steps to beat)."""
    task.on_step_loop = True
    return task


def runs_step_loop(task: Callable) -> bool:
    return getattr(task, "on_step_loop", False)


class Heartbeat:
    """This rank's heartbeat file, rewritten when the phase changes or `interval_s` has passed."""

    def __init__(self, path: Path, rank: int, interval_s: float = 2.0):
        self.path, self.interval_s = path, interval_s
        self.record = {"rank": rank, "host": socket.gethostname(), "node": this_node(), "pid": os.getpid(),
                       "step": 0, "phase": "", "time": 0.0}
        self._written = float("-inf")
        self._busy: collections.deque[tuple[float, float]] = collections.deque(maxlen=BUSY_WINDOW)
        path.parent.mkdir(parents=True, exist_ok=True)

    def took(self, busy_s: float, step_s: float) -> None:
        """One step on this rank: its own work (the time outside the stop vote) and its whole
        time; the record keeps the means of the last BUSY_WINDOW steps, written with the next beat."""
        self._busy.append((busy_s, step_s))
        count = len(self._busy)
        self.record.update(busy_s=round(sum(b for b, _ in self._busy) / count, 4), busy_steps=count,
                           step_s=round(sum(t for _, t in self._busy) / count, 4))

    def beat(self, step: int, phase: str = STEP) -> None:
        now = time.time()
        changed = phase != self.record["phase"]
        if not changed and now - self._written < self.interval_s:
            return
        self.record.update(step=step, phase=phase, time=now)
        # rename without fsync: a torn file is impossible, and after a power loss nobody watches
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(self.record))
            os.replace(tmp, self.path)
        except OSError:
            return      # a full disk fails the checkpoint with its reason; a missed beat only ages
        self._written = now

    def remove(self) -> None:
        """No heartbeat for this rank: the hang watch leaves a rank without one alone."""
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def watched_rendezvous(environ: MutableMapping[str, str], rank: int) -> Iterator[None]:
    """Around a rank's rendezvous (distributed.init): a task off the step loop has had no
    heartbeat since its import, so one is kept (`launching`, the start budget) until the rank has
    joined its process group; a step-loop task's launch heartbeat is already there and stays."""
    path = environ.pop(HEARTBEAT_VARIABLE, None)     # this rank's: no child process inherits it
    if not path or Path(path).exists():
        yield
        return
    beat = Heartbeat(Path(path), rank)
    beat.beat(0, LAUNCHING)
    try:
        yield
    finally:
        beat.remove()


def read_all(folder: Path) -> list[dict]:
    """The heartbeats under `folder`, by rank (a file being replaced at that instant is skipped)."""
    beats = []
    for path in sorted(folder.glob("rank-*.json")):
        try:
            beats.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(beats, key=lambda b: b["rank"])


@dataclass
class Hang:
    """A detected hang: every rank's last heartbeat (with its `age` in seconds) and the budgets."""
    ranks: list[dict]
    timeouts: HangTimeouts

    def describe(self) -> str:
        """Where the ranks stopped; no times in it, so the same hang twice reads the same (the
        policy's loop guard compares these)."""
        where = "; ".join(f"rank {b['rank']} on {b['host']} at step {b['step']} ({b['phase']}, "
                          f"{self.timeouts.describe_budget(b['phase'])})" for b in self.ranks)
        return f"hang: no rank made progress: {where}"


class HangWatch:
    """The supervisor's view of one attempt's heartbeats; `check` at most every `every_s` seconds."""

    def __init__(self, folder: Path, timeouts: HangTimeouts, every_s: float = 1.0):
        self.folder, self.timeouts, self.every_s = folder, timeouts, every_s
        self._checked = float("-inf")

    def check(self, now: float | None = None) -> Hang | None:
        """A Hang when every rank's newest heartbeat is older than its phase's budget."""
        now = time.time() if now is None else now
        if now - self._checked < self.every_s:
            return None
        self._checked = now
        beats = read_all(self.folder)
        if not beats:
            return None             # a task off the step loop: not watched
        step_s = measured_step_s(beats) or self._earlier_step_s()
        for beat in beats:
            beat["age"] = now - beat["time"]
        if any(b["age"] <= self.timeouts.budget(b["phase"], step_s) for b in beats):
            return None
        return Hang(beats, self.timeouts)

    def _earlier_step_s(self) -> float | None:
        """The step time the newest earlier attempt of this shard measured (until this one has)."""
        earlier = sorted((p for p in self.folder.parent.glob("attempt-*") if p != self.folder),
                         key=lambda p: int(p.name.split("-")[1]))
        for folder in reversed(earlier):
            step_s = measured_step_s(read_all(folder))
            if step_s:
                return step_s
        return None


def measured_step_s(beats: list[dict]) -> float | None:
    """The slowest rank's mean step time in these heartbeats (None before any was measured)."""
    return max((b["step_s"] for b in beats if b.get("step_s")), default=None)


@dataclass(frozen=True)
class Straggler:
    """A rank the others keep waiting for: its own work per step against the others' median."""
    rank: int
    host: str
    busy_s: float
    others_s: float
    steps: int

    def describe(self) -> str:
        return (f"straggler: rank {self.rank} on {self.host} works {self.busy_s:.2f} s a step, "
                f"the others {self.others_s:.2f} s (mean of its last {self.steps} steps)")


def stragglers(beats: list[dict]) -> list[Straggler]:
    """The ranks whose mean own work per step is persistently much longer than the others'.

    In synchronous training every rank completes the same steps at the same rate, so step rates
    cannot tell a slow rank; its peers' time waiting for it in the stop vote can: their own work
    per step stays short while the slow rank's is long. A rank whose slowness its peers absorb
    inside the task's own collectives (DDP's gradient all-reduce) looks like them and is not named.
    """
    measured = [b for b in beats if b.get("busy_steps", 0) >= STRAGGLER_MIN_STEPS]
    found = []
    for beat in measured:
        others = [b["busy_s"] for b in measured if b is not beat]
        if not others:
            continue
        median = statistics.median(others)
        if beat["busy_s"] >= STRAGGLER_RATIO * median and beat["busy_s"] - median >= STRAGGLER_MIN_EXCESS_S:
            found.append(Straggler(beat["rank"], beat["host"], beat["busy_s"], median, beat["busy_steps"]))
    return found


def this_node() -> str:
    """This process's node as the scheduler names it (Slurm's SLURMD_NODENAME), else the host."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def dump_stacks(hang: Hang, wait_s: float = 1.0,
                remote: Callable[[str, list[int]], None] | None = None) -> None:
    """SIGQUIT to every hung rank (launcher.entry registered faulthandler on it: the stacks of all
    its threads go to its log), then `wait_s` for them to be written. Ranks on this node are
    signalled here; those on another node through `remote(node, pids)` (the Slurm supervisor's
    step on that node), and without it are out of reach."""
    here, elsewhere = this_node(), collections.defaultdict(list)
    for beat in hang.ranks:
        node = beat.get("node", beat["host"])
        if node != here:
            elsewhere[node].append(beat["pid"])
            continue
        try:
            os.kill(beat["pid"], signal.SIGQUIT)
        except ProcessLookupError:
            pass
    for node, pids in sorted(elsewhere.items()):
        if remote is not None:
            remote(node, pids)
    time.sleep(wait_s)

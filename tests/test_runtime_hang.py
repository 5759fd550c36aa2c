"""Hang detection: heartbeats, the hang rule, and a frozen rank in a real 2-rank torchrun run
(detected within its timeout, stacks in the logs, restarted from the newest checkpoint, the same
final digest as a run that did not hang), next to a slow but alive rank that is left alone."""
import json
import socket
import time
from pathlib import Path

import pytest

from launcher import api, heartbeat, plan as planner
from launcher.fields import SpecInvalid
from launcher.heartbeat import HangTimeouts, HangWatch, Heartbeat
from launcher.spec import load_spec
from tests.launcher_helpers import launcher, processed_items, run_dir_from, training_spec, write_spec

TIMEOUTS = HangTimeouts(step=10, start=100, save=50, evaluate=200)


def test_heartbeat_is_written_on_a_phase_change_and_otherwise_at_most_every_interval(tmp_path):
    path = tmp_path / "rank-0.json"
    beat = Heartbeat(path, rank=0, interval_s=60)
    beat.beat(0, heartbeat.STARTING)
    beat.beat(1)                                        # starting -> step: written at once
    assert json.loads(path.read_text())["step"] == 1
    beat.beat(2)                                        # same phase, within the interval: skipped
    assert json.loads(path.read_text())["step"] == 1
    beat.beat(2, heartbeat.SAVING)
    record = json.loads(path.read_text())
    assert (record["step"], record["phase"], record["rank"]) == (2, "saving", 0)
    assert [p.name for p in tmp_path.iterdir()] == ["rank-0.json"]     # no temporary left


def test_the_step_loop_beats_each_phase_a_save_and_an_evaluation_enter(tmp_path):
    from launcher.runtime.checkpoint import RNGState
    from launcher.runtime.context import CheckpointPolicy, TaskContext
    from launcher.runtime.distributed import single_process_env
    from launcher.runtime.loop import StepLoop
    from launcher.runtime.preemption import StopRequest

    ctx = TaskContext(run_dir=tmp_path, stage="train", config={}, stop=StopRequest(), attempt=2,
                      checkpoint=CheckpointPolicy(every_steps=2))
    path = ctx.layout.heartbeat(0, 2, 0)
    phases = []
    with StepLoop(ctx, single_process_env(), {"rng": RNGState()}, seed=0, total_steps=3,
                  before_save=lambda: phases.append(json.loads(path.read_text())["phase"])) as loop:
        phases.append(json.loads(path.read_text())["phase"])
        loop.restore()
        for step in loop.steps():
            with loop.evaluating():
                phases.append(json.loads(path.read_text())["phase"])
            phases.append(json.loads(path.read_text())["phase"])
        loop.finish()
    assert phases == ["starting", "evaluating", "starting",     # step 1: nothing ended yet
                      "evaluating", "step", "saving",           # step 2 ended (beat), then its save
                      "evaluating", "step", "saving"]           # step 3, the last: saved
    record = json.loads(path.read_text())
    assert (record["step"], record["phase"], record["rank"]) == (3, "finished", 0)
    assert "busy_s" not in record       # every step evaluated: none is a sample of the rank's own work


def write_beats(folder: Path, *beats: tuple[int, str, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("rank-*.json"):
        old.unlink()
    for rank, (step, phase, when) in enumerate(beats):
        (folder / f"rank-{rank}.json").write_text(json.dumps(
            {"rank": rank, "host": "h", "pid": 1, "step": step, "phase": phase, "time": when}))


def test_hang_rule_each_phase_has_its_budget(tmp_path):
    now = 1000.0
    write_beats(tmp_path)
    assert HangWatch(tmp_path, TIMEOUTS).check(now) is None           # no heartbeats: not watched
    write_beats(tmp_path, (3, "step", now - 11), (3, "step", now - 9))
    assert HangWatch(tmp_path, TIMEOUTS).check(now) is None           # one rank still moves
    write_beats(tmp_path, (0, "starting", now - 99), (3, "saving", now - 49), (3, "evaluating", now - 199))
    assert HangWatch(tmp_path, TIMEOUTS).check(now) is None           # within the start, save, evaluate budgets
    write_beats(tmp_path, (0, "starting", now - 101), (3, "saving", now - 51))
    hang = HangWatch(tmp_path, TIMEOUTS).check(now)
    assert [b["age"] for b in hang.ranks] == [101, 51]
    write_beats(tmp_path, (3, "evaluating", now - 201))
    assert HangWatch(tmp_path, TIMEOUTS).check(now).ranks[0]["phase"] == "evaluating"
    write_beats(tmp_path, (7, "step", now - 11), (7, "finished", now - 12))   # a rank that does not exit
    hang = HangWatch(tmp_path, TIMEOUTS).check(now)
    assert hang.describe() == ("hang: no rank made progress: rank 0 on h at step 7 (step, budget 10 s); "
                               "rank 1 on h at step 7 (finished, budget 10 s)")
    assert hang.describe() == HangWatch(tmp_path, TIMEOUTS).check(now + 5).describe()   # no times in it


def test_a_rank_still_launching_has_the_start_budget(tmp_path):
    now = 1000.0
    write_beats(tmp_path, (0, "launching", now - 99), (0, "launching", now - 99))
    assert HangWatch(tmp_path, TIMEOUTS).check(now) is None
    write_beats(tmp_path, (0, "launching", now - 101), (0, "launching", now - 99))
    assert HangWatch(tmp_path, TIMEOUTS).check(now) is None           # rank 1 is within it
    write_beats(tmp_path, (0, "launching", now - 101), (0, "starting", now - 101))
    assert HangWatch(tmp_path, TIMEOUTS).check(now).describe() == (
        "hang: no rank made progress: rank 0 on h at step 0 (launching, budget 100 s); "
        "rank 1 on h at step 0 (starting, budget 100 s)")


def test_without_a_spec_value_the_step_budget_is_derived_from_measured_step_times(tmp_path):
    derived, now = HangTimeouts(), 1000.0
    current, earlier = tmp_path / "attempt-2", tmp_path / "attempt-1"
    write_beats(current, (3, "step", now - 301))
    assert HangWatch(current, derived).check(now) is not None          # nothing measured: the floor
    write_beats(earlier, (9, "step", now - 5000))
    (earlier / "rank-0.json").write_text(json.dumps({**json.loads((earlier / "rank-0.json").read_text()),
                                                     "step_s": 30.0}))
    assert HangWatch(current, derived).check(now) is None              # the earlier attempt's 30 s: 600 s
    write_beats(current, (3, "step", now - 401))
    beat = json.loads((current / "rank-0.json").read_text())
    (current / "rank-0.json").write_text(json.dumps({**beat, "step_s": 20.0}))
    hang = HangWatch(current, derived).check(now)                       # its own 20 s a step: 400 s
    assert hang.describe() == ("hang: no rank made progress: rank 0 on h at step 3 "
                               "(step, budget 20x its step time, at least 300 s)")
    (current / "rank-0.json").write_text(json.dumps({**beat, "time": now - 399, "step_s": 20.0}))
    assert HangWatch(current, derived).check(now) is None
    assert HangWatch(current, HangTimeouts(step=100)).check(now) is not None   # the spec's value wins


def busy_beats(*ranks: tuple[float, int]) -> list[dict]:
    return [{"rank": r, "host": f"h{r}", "busy_s": busy, "busy_steps": steps} for r, (busy, steps) in enumerate(ranks)]


def test_a_straggler_is_a_rank_persistently_twice_as_busy_as_the_others():
    found = heartbeat.stragglers(busy_beats((0.10, 8), (0.31, 8), (0.12, 8)))
    assert [(s.rank, s.host, s.others_s) for s in found] == [(1, "h1", 0.11)]
    assert found[0].describe() == ("straggler: rank 1 on h1 works 0.31 s a step, the others 0.11 s "
                                   "(mean of its last 8 steps)")
    assert heartbeat.stragglers(busy_beats((0.10, 8), (0.19, 8))) == []        # under twice
    assert heartbeat.stragglers(busy_beats((0.001, 8), (0.04, 8))) == []       # 40x, but 39 ms: jitter
    assert heartbeat.stragglers(busy_beats((0.10, 8), (0.90, 3))) == []        # 3 steps: not yet persistent
    assert heartbeat.stragglers(busy_beats((0.90, 8))) == []                   # alone: nobody waits for it
    assert heartbeat.stragglers(busy_beats((0.10, 8), (0.90, 8), (0.95, 8))) == []    # no norm to lag


def test_hang_timeouts_are_validated_and_reach_the_plan(tmp_path):
    spec = json.loads(training_spec("t", "launcher.diagnose_train:main", {}))
    spec["stages"]["train"].update(hang_timeout=30, hang_timeout_save=300, hang_timeout_evaluate=900)
    plan = planner.build(load_spec(spec), str(tmp_path), "python")
    assert plan.stage("train").hang == HangTimeouts(step=30, start=HangTimeouts().start, save=300, evaluate=900)
    assert planner.Plan.from_json(json.loads(json.dumps(plan.to_json()))).stage("train").hang == \
        plan.stage("train").hang
    # collectives wait the longest budget (here the start's) and a margin, unless the spec says
    assert plan.stage("train").env["NFS_COLLECTIVE_TIMEOUT_S"] == f"{HangTimeouts().start + 60:g}"
    spec["stages"]["train"].update(collective_timeout=45)
    assert planner.build(load_spec(spec), str(tmp_path), "python").stage("train").env[
        "NFS_COLLECTIVE_TIMEOUT_S"] == "45"
    spec["stages"]["train"].update(hang_timeout=1, hang_timeout_start="soon")
    with pytest.raises(SpecInvalid) as refused:
        load_spec(spec)
    assert "stages.train.hang_timeout" in str(refused.value) and "hang_timeout_start" in str(refused.value)


STEPS = 6
HANG_TIMEOUT = 5
START_TIMEOUT = 20          # from launch to the loop: imports torch and DeepSpeed, then the rendezvous


def run_training(tmp_path: Path, name: str, config: dict, task: str = "launcher.diagnose_train:main",
                 start_timeout: float = 120) -> Path:
    spec = json.loads(training_spec(name, task, config if "items" in config else {"steps": STEPS, **config},
                                    every_steps=2, restarts=2))
    spec["stages"]["train"].update(hang_timeout=HANG_TIMEOUT, hang_timeout_start=start_timeout,
                                   hang_timeout_save=60)
    done = launcher("submit", str(write_spec(tmp_path, json.dumps(spec), f"{name}.yaml")), cwd=tmp_path,
                    timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return run_dir_from(done.stdout)


def ledger(run: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in (run / "ledger" / "train").glob("shard-0-attempt-*.json")]
    return sorted(records, key=lambda r: r["attempt"])


def final_digest(run: Path) -> str:
    return json.loads((run / "stages" / "train" / "final.json").read_text())["digest"]


@pytest.mark.slow
def test_a_frozen_rank_is_detected_dumped_and_restarted_a_slow_one_is_not(tmp_path):
    # Slow but alive: rank 1 takes 1.5 s more per step; heartbeats stay within the 5 s budget.
    slow = run_training(tmp_path, "slow", {"slow_rank": 1, "slow_seconds": 1.5})
    assert [a["state"] for a in ledger(slow)] == ["completed"]
    # ... and named as the straggler with its host, in the API and in `status`
    (stage,) = api.open_run(str(slow)).stages
    assert len(stage.stragglers) == 1 and stage.stragglers[0].startswith(
        f"straggler: rank 1 on {socket.gethostname()} works 1.5"), stage.stragglers
    shown = launcher("status", str(slow), cwd=tmp_path)
    assert stage.stragglers[0] in shown.stdout, shown.stdout

    # Frozen: rank 1 stops inside step 3 of the first attempt; rank 0 waits in the next collective.
    hung = run_training(tmp_path, "hung", {"hang_rank": 1, "hang_at_step": 3})
    first, second = ledger(hung)
    assert (first["state"], second["state"]) == ("continue", "completed")
    assert first["error"].startswith("hang: no rank made progress: rank 0 on ")
    where = {b["rank"]: (b["step"], b["phase"]) for b in first["hang"]}
    assert where == {0: (2, "step"), 1: (2, "step")}           # both last beat after step 2's save
    detected_after = first["end"] - max(b["time"] for b in first["hang"])
    assert HANG_TIMEOUT < detected_after < HANG_TIMEOUT + 4, detected_after
    assert second["checkpoint_step"] == STEPS and first["checkpoint_step"] == 2
    logs = hung / "stages" / "train" / "logs" / "attempt-0"
    assert "in freeze" in (logs / "rank-1.log").read_text()          # the frozen rank's stack
    assert "in agree" in (logs / "rank-0.log").read_text()           # its peer, waiting in the stop vote
    assert final_digest(hung) == final_digest(slow)


@pytest.mark.slow
def test_a_rank_frozen_before_its_process_group_is_a_hang_of_the_launch(tmp_path):
    # Rank 1 of the first attempt never reaches the rendezvous; rank 0 waits in it. Neither has a
    # step loop yet: the entry's launch heartbeat is what ages.
    hung = run_training(tmp_path, "launch", {"hang_rank": 1, "hang_at_step": 0}, start_timeout=START_TIMEOUT)
    first, second = ledger(hung)
    assert (first["state"], second["state"]) == ("continue", "completed")
    assert {b["rank"]: (b["step"], b["phase"]) for b in first["hang"]} == {0: (0, "launching"), 1: (0, "launching")}
    assert first["error"].endswith(f"(launching, budget {START_TIMEOUT} s)")
    detected_after = first["end"] - max(b["time"] for b in first["hang"])
    assert START_TIMEOUT < detected_after < START_TIMEOUT + 4, detected_after
    logs = hung / "stages" / "train" / "logs" / "attempt-0"
    assert "in freeze" in (logs / "rank-1.log").read_text()
    assert "in init" in (logs / "rank-0.log").read_text()             # waiting for rank 1 to join
    assert json.loads((hung / "stages" / "train" / "final.json").read_text())["step"] == STEPS


@pytest.mark.slow
def test_a_task_off_the_step_loop_outlives_the_start_budget(tmp_path):
    # diagnose.items has no steps to beat: after its import it is not watched, however long it runs.
    done = run_training(tmp_path, "items", {"items": 3, "seconds_per_item": 3}, task="diagnose.items",
                        start_timeout=5)
    assert [a["state"] for a in ledger(done)] == ["completed"]
    assert set(processed_items(done, "train")) == {0, 1, 2}


@pytest.mark.slow
def test_a_task_off_the_step_loop_is_watched_in_its_rendezvous(tmp_path):
    # diagnose.allreduce: rank 1 of the first attempt never joins; rank 0 waits in the rendezvous,
    # where its heartbeat says `launching` (rank 1 dropped its own after the import).
    hung = run_training(tmp_path, "allreduce", {"freeze_rank": 1}, task="diagnose.allreduce",
                        start_timeout=START_TIMEOUT)
    first, second = ledger(hung)
    assert (first["state"], second["state"]) == ("continue", "completed")
    assert {b["rank"]: b["phase"] for b in first["hang"]} == {0: "launching"}
    detected_after = first["end"] - max(b["time"] for b in first["hang"])
    assert START_TIMEOUT < detected_after < START_TIMEOUT + 4, detected_after
    assert "in init" in (hung / "stages" / "train" / "logs" / "attempt-0" / "rank-0.log").read_text()
    reports = sorted((hung / "stages" / "train" / "diagnose").glob("rank-*.json"))
    assert [json.loads(r.read_text())["sum"] for r in reports] == [3.0, 3.0]
    assert not list((hung / "stages" / "train" / "heartbeats" / "shard-0" / "attempt-1").glob("rank-*"))  # joined

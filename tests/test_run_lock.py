"""At most one live attempt per run: a second supervisor is refused with who holds the run, a
dead or zombie holder never blocks, a trainer that outlived its supervisor is stopped (after
its checkpoint) before a new attempt starts, and `status` tells the truth about each attempt.

Real local supervisors, torchrun and the toy training task (launcher/diagnose_train.py) or the
item-processing diagnostic task; processes are killed with real signals.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from launcher.runlock import run_processes
from tests.launcher_helpers import (launcher, processed_items, run_dir_from, supervisor_running, training_spec,
                                    wait_until, write_spec)

ITEMS = """
    name: items
    run_root: runs
    stages:
      shards:
        task: diagnose.items
        config: {items: 30, seconds_per_item: 0.2}
"""


def start_supervisor(tmp_path: Path, spec: Path, *args: str) -> subprocess.Popen:
    """`python -m launcher submit SPEC` in the foreground, as an operator's shell runs it."""
    return subprocess.Popen([sys.executable, "-m", "launcher", *args, "submit", str(spec)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def only_run(tmp_path: Path) -> Path:
    return wait_until(lambda: next((tmp_path / "runs").glob("*/plan.json"), None), 60, "the run").parent


def attempts(run: Path, stage: str) -> list[dict]:
    records = [json.loads(p.read_text()) for p in (run / "ledger" / stage).glob("shard-0-attempt-*.json")]
    return sorted(records, key=lambda a: a["attempt"])


def toy_spec(name: str) -> str:
    return training_spec(name, "launcher.diagnose_train:main", {"steps": 40, "sleep_per_step": 0.15},
                         every_steps=5, restarts=3)


def final_digest(run: Path) -> str:
    return json.loads((run / "stages" / "train" / "final.json").read_text())["digest"]


def test_resume_while_the_local_supervisor_runs_is_refused_with_its_host_pid_and_start(tmp_path):
    run = run_dir_from(launcher("submit", str(write_spec(tmp_path, ITEMS)), "--detach", cwd=tmp_path,
                                check=True).stdout)
    wait_until(lambda: len(processed_items(run, "shards")) >= 2, 60, "a few items")
    refused = launcher("resume", run.name, cwd=tmp_path)
    assert refused.returncode == 1
    assert "is held by the local supervisor" in refused.stderr
    holder = json.loads((run / "supervisor.lock.holder.json").read_text())
    assert f"pid {holder['pid']} on host {holder['host']} since" in refused.stderr
    wait_until(lambda: not supervisor_running(run), 60, "the run to finish")
    assert processed_items(run, "shards") == list(range(30))


def test_two_resumes_at_once_run_one_supervisor_and_every_item_once(tmp_path):
    supervisor = start_supervisor(tmp_path, write_spec(tmp_path, ITEMS))
    run = only_run(tmp_path)
    wait_until(lambda: len(processed_items(run, "shards")) >= 2, 60, "a few items")
    supervisor.send_signal(signal.SIGINT)
    supervisor.communicate(timeout=60)
    both = [subprocess.Popen([sys.executable, "-m", "launcher", "resume", run.name], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in both]
    assert sorted(code for code, _ in results) == [0, 1]
    assert "held by" in next(err for code, err in results if code == 1)
    assert processed_items(run, "shards") == list(range(30))


def test_a_zombie_supervisor_does_not_block_resume(tmp_path):
    supervisor = start_supervisor(tmp_path, write_spec(tmp_path, ITEMS))
    run = only_run(tmp_path)
    wait_until(lambda: len(processed_items(run, "shards")) >= 2, 60, "a few items")
    os.kill(supervisor.pid, signal.SIGKILL)
    wait_until(lambda: psutil.Process(supervisor.pid).status() == psutil.STATUS_ZOMBIE, 10, "a zombie")
    resumed = launcher("resume", run.name, cwd=tmp_path, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert processed_items(run, "shards") == list(range(30))
    supervisor.wait()


def test_the_trainer_of_a_sigkilled_supervisor_checkpoints_and_exits_instead_of_training_on(tmp_path):
    supervisor = start_supervisor(tmp_path, write_spec(tmp_path, toy_spec("killed")))
    run = only_run(tmp_path)
    wait_until(lambda: (run / "stages/train/checkpoints/latest").exists(), 120, "a first checkpoint")
    assert len(run_processes(run)) >= 3                        # torchrun's agent and 2 ranks
    supervisor.kill()
    supervisor.wait()
    wait_until(lambda: not run_processes(run), 60, "every process of the run to exit")
    outcome = json.loads((run / "stages/train/outcomes/shard-0-attempt-0.json").read_text())
    assert outcome["exit"] == 75 and outcome["signal"] == "SIGUSR2"


def test_status_shows_an_attempt_whose_supervisor_died_as_lost_and_resume_records_it(tmp_path):
    reference = run_dir_from(launcher("submit", str(write_spec(tmp_path, toy_spec("reference"), "ref.yaml")),
                                      cwd=tmp_path, check=True, timeout=300).stdout)
    supervisor = start_supervisor(tmp_path / "killed", write_spec(_mkdir(tmp_path / "killed"), toy_spec("killed")))
    run = only_run(tmp_path / "killed")
    wait_until(lambda: (run / "stages/train/checkpoints/latest").exists(), 120, "a first checkpoint")
    supervisor.kill()
    supervisor.wait()

    status = launcher("status", str(run), cwd=tmp_path, check=True).stdout
    assert " lost " in status and "running" not in status
    launcher("resume", str(run), cwd=tmp_path, check=True, timeout=300)
    first, *_, last = attempts(run, "train")
    assert first["state"] == "lost" and first["end"] is not None and "supervisor died" in first["reason"]
    assert first["checkpoint_step"] >= 5 and last["state"] == "completed"
    assert final_digest(run) == final_digest(reference)


def test_resume_stops_an_orphaned_trainer_before_it_starts_a_new_attempt(tmp_path):
    """A trainer started for the run but without a supervisor (as left by a supervisor that died
    where parent-death signals do not reach) is asked to checkpoint; only then does the resumed
    attempt start, so no two trainers ever share the run."""
    supervisor = start_supervisor(tmp_path, write_spec(tmp_path, ITEMS))
    run = only_run(tmp_path)
    wait_until(lambda: len(processed_items(run, "shards")) >= 2, 60, "a few items")
    supervisor.send_signal(signal.SIGINT)
    supervisor.communicate(timeout=60)
    environment = {**os.environ, **json.loads((run / "plan.json").read_text())["stages"][0]["env"],
                   "NFS_ATTEMPT": "7"}
    orphan = subprocess.Popen([sys.executable, "-m", "launcher.entry", str(run), "shards"], env=environment,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: any(i["attempt"] == 7 for i in _log(run)), 60, "the orphan to work")

    resumed = launcher("resume", run.name, cwd=tmp_path, check=True, timeout=120)
    assert "outlived their supervisor" in resumed.stdout
    assert orphan.wait(timeout=5) == 75
    orphan_items = [i["item"] for i in _log(run) if i["attempt"] == 7]
    resumed_items = [i["item"] for i in _log(run) if i["attempt"] not in (0, 7)]
    assert not set(orphan_items) & set(resumed_items)
    assert processed_items(run, "shards") == list(range(30))


def _log(run: Path) -> list[dict]:
    path = run / "stages/shards/items/processed-by-shard-0.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path

"""The stop signals clusters really send reach every process of a step, data-loader workers
and torchrun's agent included; the ranks still commit one complete checkpoint, exit 75, and the
continued run ends bitwise equal to an uninterrupted one.

Real parts throughout: `stylenerf.train` (tiny preset, 2 ranks, DeepSpeed ZeRO-2 fp32, 2 DataLoader
worker processes per rank) under torchrun, started by the launcher; locally and on the local
Slurm cluster, whose `debug` partition is configured the common way (no user signal at
preemption; SIGTERM to every process, SIGKILL after GraceTime=20 s).
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.launcher_helpers import launcher, run_dir_from, supervisor_running, wait_until, write_spec

FACES = Path(__file__).resolve().parents[1] / "data" / "sample" / "faces" / "lfw"
STEPS = 30
CONFIG = {"data": str(FACES), "preset": "tiny", "workers": 2, "threads": 1, "metric_images": 32,
          "engine": "deepspeed", "zero_stage": 2, "precision": "fp32", "max_steps": STEPS,
          "tick_kimg": 0.016, "snapshot_ticks": 1000}


def spec(name: str, backend: str = "local", restarts: int = 2, **slurm) -> str:
    return json.dumps({
        "name": name, "backend": backend, "run_root": "runs", "env": {"OMP_NUM_THREADS": "1"},
        "local": {"device": "cpu", "max_restarts": restarts},
        "slurm": {"partition": "debug", "time": "20", "max_restarts": restarts, **slurm},
        "stages": {"train": {"task": "stylenerf.train", "resources": {"tasks_per_node": 2, "cpus_per_task": 1},
                             "checkpoint": {"every_steps": 1000, "keep_last": 2}, "config": CONFIG}}})


def submit(folder: Path, text: str, *extra: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    result = launcher("submit", str(write_spec(folder, text)), *extra, cwd=folder, check=True, timeout=900)
    return run_dir_from(result.stdout)


def stage(run: Path) -> Path:
    return run / "stages" / "train"


def attempts(run: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in (run / "ledger" / "train").glob("shard-0-attempt-*.json")]
    return sorted(records, key=lambda a: a["attempt"])


def digests(run: Path) -> dict:
    return json.loads((stage(run) / "final.json").read_text())["digests"]


def step_reached(run: Path) -> int:
    path = stage(run) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def ranks_with_data_workers(root: psutil.Process) -> list[psutil.Process]:
    """The `launcher.entry` ranks under `root` once each has its 2 DataLoader workers."""
    try:
        ranks = [p for p in root.children() if "launcher.entry" in p.cmdline()]   # workers are forks of them
        return ranks if len(ranks) == 2 and all(len(r.children()) >= 2 for r in ranks) else []
    except psutil.Error:
        return []


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Final weights' digests of the same run, never interrupted."""
    return digests(submit(tmp_path_factory.mktemp("reference"), spec("reference")))


@pytest.mark.slow
def test_sigterm_to_every_process_of_a_local_attempt_commits_one_checkpoint_and_resumes_bitwise(tmp_path, reference):
    run = submit(tmp_path, spec("term-all"), "--detach")
    wait_until(lambda: step_reached(run) >= 6 and attempts(run), 300, "step 6", interval=0.05)
    agent = psutil.Process(int(attempts(run)[0]["job_id"].split(":")[1]))
    ranks = wait_until(lambda: ranks_with_data_workers(agent), 60, "ranks with their data workers")
    everyone = [agent] + agent.children(recursive=True)
    assert len(everyone) >= 1 + 2 + 4                      # agent, 2 ranks, 2 x 2 data workers
    for process in everyone:                               # as Slurm does: every process, at once
        process.send_signal(signal.SIGTERM)
    wait_until(lambda: not supervisor_running(run), 600, "the continued run to finish")

    first, second = attempts(run)
    assert (first["exit_code"], first["signal"], first["state"]) == (75, "SIGTERM", "continue")
    assert second["exit_code"] == 0 and first["checkpoint_step"] >= 6
    assert digests(run) == reference
    assert "killed by signal" not in "".join(p.read_text() for p in (stage(run) / "logs").rglob("*.log"))
    assert ranks


@pytest.mark.slow
def test_a_second_ctrl_c_still_ends_in_a_committed_checkpoint_and_resume_is_bitwise(tmp_path, reference):
    path = write_spec(tmp_path, spec("ctrl-c"))
    supervisor = subprocess.Popen([sys.executable, "-m", "launcher", "submit", str(path)], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "runs"
    wait_until(lambda: any(step_reached(r) >= 6 for r in run.glob("*")), 300, "step 6", interval=0.05)
    supervisor.send_signal(signal.SIGINT)                  # the warning signal to every process
    time.sleep(0.3)
    supervisor.send_signal(signal.SIGINT)                  # then SIGTERM to every process
    output, _ = supervisor.communicate(timeout=300)
    run = next(run.glob("*"))

    (first,) = attempts(run)
    assert (first["exit_code"], first["state"]) == (75, "stopped"), output
    assert first["checkpoint_step"] >= 6
    launcher("resume", run.name, cwd=tmp_path, check=True, timeout=600)
    assert digests(run) == reference



@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_preempted_slurm_job_saves_within_the_grace_time_requeues_once_and_resumes_bitwise(tmp_path, reference):
    """No user signal at preemption: SIGTERM reaches every process of the job (batch step,
    srun, torchrun's agent, ranks, data workers); GraceTime is 20 s."""
    run = submit(tmp_path, spec("preempted", backend="slurm",
                                extra_sbatch=["--nodelist=node3", "--exclusive"]))
    wait_until(lambda: step_reached(run) >= 6, 300, "step 6 on the cluster", interval=0.1)
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-w", "node3", "--exclusive",
                             "-t", "1", "--wrap", "sleep 5"], capture_output=True, text=True, check=True,
                            cwd=tmp_path)
    preempted_at = time.time()
    wait_until(lambda: any(a.get("state") == "completed" for a in attempts(run)), 600,
               "the preempted job to finish")

    first, second = attempts(run)
    assert (first["exit_code"], first["signal"], first["state"]) == (75, "SIGTERM", "preempted")
    assert first["end"] - preempted_at < 20, "saved within the grace time"
    assert second["state"] == "completed" and second["restart_count"] == 1
    assert digests(run) == reference
    assert urgent.stdout.strip()


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_scancel_signal_term_full_commits_one_checkpoint_and_the_job_is_requeued(tmp_path, reference):
    """`scancel --signal=TERM --full`: the batch step (supervisor, torchrun's agent, ranks, data
    workers: a one-node stage runs there, not under srun) and the relay step get SIGTERM; the
    ranks checkpoint and the supervisor requeues the job once."""
    run = submit(tmp_path, spec("scancel-term", backend="slurm"))
    wait_until(lambda: step_reached(run) >= 6, 300, "step 6 on the cluster", interval=0.1)
    job = attempts(run)[0]["job_id"]
    subprocess.run(["scancel", "--signal=TERM", "--full", job], check=True)
    wait_until(lambda: any(a.get("state") == "completed" for a in attempts(run)), 600, "the job to finish")

    first, second = attempts(run)
    assert (first["exit_code"], first["signal"], first["state"]) == (75, "SIGTERM", "requeued")
    assert second["state"] == "completed"
    assert digests(run) == reference


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_plain_scancel_still_commits_a_checkpoint_that_resume_continues_from(tmp_path, reference):
    """`scancel JOB` ends the job: SIGTERM to every process, SIGKILL KillWait (10 s) later. The
    ranks save within it; nothing is requeued (the job is being cancelled); `resume` continues."""
    run = submit(tmp_path, spec("scancel", backend="slurm"))
    wait_until(lambda: step_reached(run) >= 6, 300, "step 6 on the cluster", interval=0.1)
    subprocess.run(["scancel", attempts(run)[0]["job_id"]], check=True)
    wait_until(lambda: attempts(run)[0].get("end"), 120, "the attempt to end")

    (first,) = attempts(run)
    assert (first["exit_code"], first["signal"], first["state"]) == (75, "SIGTERM", "cancelled")
    assert first["checkpoint_step"] >= 6
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", first["job_id"]], capture_output=True,
                                          text=True).stdout.strip(), 60, "Slurm to let go of the job")
    launcher("resume", run.name, cwd=tmp_path, check=True)
    wait_until(lambda: any(a.get("state") == "completed" for a in attempts(run)), 600, "the resumed job")
    assert digests(run) == reference

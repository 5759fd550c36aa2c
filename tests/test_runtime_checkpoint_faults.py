"""Checkpoints when things go wrong: a full disk (on a real, small tmpfs), checkpoints that are
all corrupt, and the records and markers the launcher reads (`launcher.checkpoint_health`).

A failed save must leave the disk as it found it (no unfinished folder holding the space), raise
the same clear error on every rank, and keep the previous checkpoints and `latest` intact. A
stage that has committed checkpoints never silently starts over at step 0.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launcher import checkpoint_health
from launcher.runtime.checkpoint import (
    CheckpointManager, CheckpointSaveFailed, ModuleState, NoSpaceForCheckpoint, NoUsableCheckpoint, OptimizerState,
    RNGState, committed_steps, read_manifest, verify)
from launcher.runtime.context import CheckpointPolicy
from launcher.runtime.distributed import single_process_env
from tests.launcher_helpers import launcher, run_dir_from, training_spec, write_spec

ROOT = Path(__file__).resolve().parents[1]
ENV = single_process_env()
MIB = 1 << 20


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(mib, name)`: a fresh tmpfs of that size at tmp_path/name, unmounted after the test."""
    mounted = []

    def mount(mib: int, name: str = "disk") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}); "
                        "the full-disk tests need a real small filesystem")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)     # lazy: a failed test may hold a file open


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def fill(folder: Path, mib: int) -> Path:
    """A ballast file of `mib` MiB, deleted later to free the space."""
    path = folder / "ballast.bin"
    path.write_bytes(os.urandom(mib * MIB))
    return path


class Trainer:
    """A 4 MiB linear layer and AdamW: its first checkpoint (no optimizer state yet) takes about
    4 MiB, every later one about 12 MiB (AdamW's two moments)."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(1024, 1024)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.progress = {"step": 0}

    def step(self) -> None:
        self.model(torch.randn(8, 1024)).square().mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.progress["step"] += 1

    def state(self) -> dict:
        return {"model": ModuleState(self.model), "optim": OptimizerState(self.optimizer), "rng": RNGState(),
                "progress": self.progress}


def checkpoint_bytes(folder: Path) -> int:
    return sum(entry["size"] for entry in read_manifest(folder)["files"].values())


def hidden_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".step-"))


def first_checkpoint_then_a_step(root: Path, policy: CheckpointPolicy = CheckpointPolicy()):
    """Commit step 1 (about 4 MiB), train a step; the next checkpoint needs about 12 MiB."""
    trainer = Trainer()
    manager = CheckpointManager(root, ENV, policy)
    manager.save(1, trainer.state())
    manager.wait()
    trainer.step()
    return trainer, manager


# ---------------------------------------------------------------- a full disk


def test_a_save_that_fills_the_disk_raises_an_error_naming_folder_bytes_needed_and_free(small_disk):
    root = small_disk(14)
    trainer, manager = first_checkpoint_then_a_step(root)
    free_before = free_bytes(root)
    with pytest.raises(NoSpaceForCheckpoint) as raised:
        manager.save(2, trainer.state())
    message = str(raised.value)
    assert str(root) in message
    needed = int(re.search(r"it needs more than the (\d+) bytes \S+ MiB\) written before the disk filled",
                           message)[1])
    assert free_before - MIB < needed <= free_before                          # it filled what was free
    assert f"step-000001 took {checkpoint_bytes(root / 'step-000001')} bytes" in message
    assert f"{free_bytes(root)} bytes are free" in message                    # free, once the folder is gone


def test_a_save_that_fills_the_disk_leaves_no_unfinished_folder(small_disk):
    root = small_disk(14)
    trainer, manager = first_checkpoint_then_a_step(root)
    free_before = free_bytes(root)
    with pytest.raises(NoSpaceForCheckpoint):
        manager.save(2, trainer.state())
    assert hidden_folders(root) == []
    assert free_bytes(root) == free_before


def test_a_save_that_fills_the_disk_keeps_the_previous_checkpoint_and_latest(small_disk):
    root = small_disk(14)
    trainer, manager = first_checkpoint_then_a_step(root)
    with pytest.raises(NoSpaceForCheckpoint):
        manager.save(2, trainer.state())
    assert committed_steps(root) == [1] and verify(root / "step-000001") == []
    assert (root / "latest").read_text() == "step-000001\n"


def test_after_space_is_freed_the_stage_resumes_from_the_last_checkpoint_and_saves_again(small_disk):
    root = small_disk(20)
    ballast = fill(root, 6)
    trainer, manager = first_checkpoint_then_a_step(root)
    with pytest.raises(NoSpaceForCheckpoint):
        manager.save(2, trainer.state())
    ballast.unlink()

    resumed = Trainer()
    manager = CheckpointManager(root, ENV)
    assert manager.restore_latest(resumed.state()) == 1
    resumed.step()
    manager.save(2, resumed.state())
    assert committed_steps(root) == [1, 2] and verify(root / "step-000002") == []


def test_an_async_save_that_fills_the_disk_raises_the_clear_error_when_it_is_committed(small_disk):
    root = small_disk(14)
    trainer, manager = first_checkpoint_then_a_step(root, CheckpointPolicy(async_save=True))
    manager.save(2, trainer.state())                 # returns once the state is copied
    with pytest.raises(NoSpaceForCheckpoint, match="step-000001"):
        manager.wait()
    assert hidden_folders(root) == [] and committed_steps(root) == [1]
    assert (root / "latest").read_text() == "step-000001\n"


def test_a_save_is_refused_before_writing_when_free_space_is_less_than_the_last_checkpoint(small_disk):
    root = small_disk(14)
    trainer, manager = first_checkpoint_then_a_step(root)
    fill(root, 7)
    free_before = free_bytes(root)
    assert free_before < checkpoint_bytes(root / "step-000001")
    with pytest.raises(NoSpaceForCheckpoint) as raised:
        manager.save(2, trainer.state())
    assert "nothing was written" in str(raised.value)
    assert f"{checkpoint_bytes(root / 'step-000001')} bytes" in str(raised.value)
    assert f"{free_before} bytes are free" in str(raised.value)
    assert free_bytes(root) == free_before and hidden_folders(root) == []


class Explodes:
    """A state entry whose write fails for a reason other than space."""

    background_ok = True

    def snapshot(self, name, env, copy):
        def write(folder):
            (folder / "half-written.bin").write_bytes(b"x" * 100)
            raise ValueError("cannot pickle this")
        return write

    def load(self, folder, name, env):
        pass


def test_a_save_that_fails_otherwise_names_the_error_and_leaves_nothing_behind(tmp_path):
    trainer = Trainer()
    manager = CheckpointManager(tmp_path, ENV)
    manager.save(1, trainer.state())
    with pytest.raises(CheckpointSaveFailed, match="ValueError: cannot pickle this") as raised:
        manager.save(2, {**trainer.state(), "boom": Explodes()})
    assert not isinstance(raised.value, NoSpaceForCheckpoint)
    assert hidden_folders(tmp_path) == [] and committed_steps(tmp_path) == [1]


FULL_DISK_WORKER = """
import faulthandler, json, os, sys, time, torch
from pathlib import Path
from launcher.runtime import checkpoint, distributed

faulthandler.dump_traceback_later(240, exit=True)    # a hang shows its stacks before the test's 300 s
root, mode, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
torch.set_num_threads(1)
env = distributed.init("cpu")


class Holder:
    def __init__(self, numel):
        self.tensor = torch.randn(numel)

    def state_dict(self):
        return {"tensor": self.tensor}


if mode == "one-rank":                  # only rank 1 writes a big file (12 MiB)
    holder = Holder(3 << 20 if env.rank == 1 else 16)
    state = {"big": checkpoint.OptimizerState(holder, per_rank=True), "progress": {"step": 1}}
else:   # zero0: rank 0 alone writes model and optimizer (12 MiB); zero3*: each rank writes 6 MiB
    import deepspeed
    model = torch.nn.Linear(1024, 1024)
    config = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": int(mode[4])},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config,
                                      dist_init_required=False)
    engine.backward(engine(torch.randn(4, 1024)).square().mean())
    engine.step()
    state = {"engine": checkpoint.DeepSpeedState(engine), "progress": {"step": 1}}
    if mode == "zero3-rank0-late" and env.rank == 0:     # rank 1's 6 MiB land first; rank 0's find 2 MiB
        write = engine.checkpoint_engine.save
        engine.checkpoint_engine.save = lambda *args, **kwargs: (time.sleep(2), write(*args, **kwargs))
try:
    checkpoint.CheckpointManager(root, env).save(1, state)
    outcome = {"error": None}
except Exception as error:
    outcome = {"error": type(error).__name__, "message": str(error),
               "hidden": sorted(p.name for p in root.iterdir() if p.name.startswith("."))}
(out / f"rank-{env.rank}.json").write_text(json.dumps(outcome))
distributed.barrier(env)
sys.stdout.flush()
os._exit(0)     # as launcher.entry ends every rank: tearing down a gloo group can deadlock
"""


def run_two_ranks(tmp_path: Path, root: Path, mode: str) -> list[dict]:
    """Run FULL_DISK_WORKER on 2 processes (gloo); each rank's outcome."""
    script, out = tmp_path / "worker.py", tmp_path / "outcomes"
    script.write_text(FULL_DISK_WORKER)
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(root), mode, str(out)], cwd=ROOT, env=env, timeout=300,
                          capture_output=True, text=True)
    missing = [rank for rank in range(2) if not (out / f"rank-{rank}.json").exists()]
    assert not missing, f"ranks {missing} left no outcome:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return [json.loads((out / f"rank-{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
def test_when_one_rank_fills_the_disk_every_rank_raises_the_same_clear_error(small_disk, tmp_path):
    root = small_disk(8)
    outcomes = run_two_ranks(tmp_path, root, "one-rank")
    assert [o["error"] for o in outcomes] == ["NoSpaceForCheckpoint"] * 2
    assert outcomes[0]["message"] == outcomes[1]["message"]
    assert "rank 1" in outcomes[0]["message"] and str(root) in outcomes[0]["message"]
    assert outcomes[0]["hidden"] == [] and hidden_folders(root) == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["zero0", "zero3", "zero3-rank0-late"])
def test_a_deepspeed_save_that_fills_the_disk_fails_on_every_rank_without_hanging(small_disk, tmp_path, mode):
    """zero0: only rank 0 writes, so only its write fails while rank 1 waits in the barrier that
    ends DeepSpeed's save; zero3: both ranks write at once and one or both fail; zero3-rank0-late:
    rank 1's write succeeds and waits in ZeRO-3's all-gather of persistent parameters while
    rank 0's fails (the hang CI met once)."""
    root = small_disk(8)
    outcomes = run_two_ranks(tmp_path, root, mode)
    assert [o["error"] for o in outcomes] == ["NoSpaceForCheckpoint"] * 2
    assert outcomes[0]["message"] == outcomes[1]["message"]
    assert hidden_folders(root) == [] and not (root / "latest").exists()


def submit_on_a_small_disk(small_disk, tmp_path) -> Path:
    """The toy task (DDP, 2 ranks, 24 MiB checkpoints every 2 steps) on a 40 MiB run root: step 2
    is committed, step 4 does not fit. Returns the run directory."""
    small_disk(40, "runs")                            # the spec's run_root, relative to cwd
    spec = training_spec("full", "launcher.diagnose_train:main", {"steps": 6, "width": 1024}, every_steps=2)
    submitted = launcher("submit", str(write_spec(tmp_path, spec)), cwd=tmp_path)
    assert submitted.returncode != 0, submitted.stdout
    return run_dir_from(submitted.stdout)


@pytest.mark.slow
def test_a_full_disk_fails_the_attempt_with_the_clear_error_in_the_ledger(small_disk, tmp_path):
    run = submit_on_a_small_disk(small_disk, tmp_path)
    [attempt] = [json.loads(p.read_text()) for p in (run / "ledger" / "train").glob("shard-0-attempt-*.json")]
    checkpoints = run / "stages" / "train" / "checkpoints"
    assert attempt["error"].startswith(f"NoSpaceForCheckpoint: no space for checkpoint step-000004 in {checkpoints}")
    assert hidden_folders(checkpoints) == [] and (checkpoints / "latest").read_text() == "step-000002\n"


@pytest.mark.slow
def test_resume_after_freeing_space_continues_from_the_last_checkpoint(small_disk, tmp_path):
    run = submit_on_a_small_disk(small_disk, tmp_path)
    subprocess.run(["mount", "-o", "remount,size=120m", str(tmp_path / "runs")], check=True)
    launcher("resume", str(run), cwd=tmp_path, check=True)
    attempts = sorted((json.loads(p.read_text()) for p in (run / "ledger" / "train").glob("shard-0-attempt-*.json")),
                      key=lambda a: a["attempt"])
    assert [a["state"] for a in attempts][-1] == "completed"
    metrics = [json.loads(line) for line in (run / "stages" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert min(m["step"] for m in metrics if m["time"] > attempts[-1]["start"]) == 3
    assert committed_steps(run / "stages" / "train" / "checkpoints") == [4, 6]


# ---------------------------------------------------------------- every checkpoint corrupt


def corrupt(folder: Path) -> None:
    """Flip a byte in the middle of the optimizer file: same size, different sha256."""
    path = folder / "optim.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def all_corrupt(tmp_path):
    """Checkpoints 5 and 10 committed, then both damaged."""
    trainer = Trainer()
    manager = CheckpointManager(tmp_path, ENV)
    for step in (5, 10):
        trainer.step()
        manager.save(step, trainer.state())
    corrupt(tmp_path / "step-000005")
    os.truncate(tmp_path / "step-000010" / "model.safetensors", 100)
    return tmp_path


def test_a_stage_whose_checkpoints_are_all_corrupt_stops_with_an_error_listing_what_was_quarantined(all_corrupt):
    with pytest.raises(NoUsableCheckpoint) as raised:
        CheckpointManager(all_corrupt, ENV).restore_latest(Trainer().state())
    message = str(raised.value)
    assert "step-000010" in message and "model.safetensors: 100 bytes, manifest says" in message
    assert "step-000005" in message and "optim.pt: sha256 differs from the manifest" in message
    assert "--fresh-start" in message and str(all_corrupt / "FRESH_START") in message


def test_the_refusal_to_start_over_repeats_on_the_next_attempt(all_corrupt):
    with pytest.raises(NoUsableCheckpoint):
        CheckpointManager(all_corrupt, ENV).restore_latest(Trainer().state())
    with pytest.raises(NoUsableCheckpoint, match="step-000010"):
        CheckpointManager(all_corrupt, ENV).restore_latest(Trainer().state())


def test_quarantine_records_say_which_folder_was_set_aside_and_why_oldest_first(all_corrupt):
    unfinished = all_corrupt / ".step-000015.tmp-0123abcdef01"
    unfinished.mkdir()
    started = time.time()
    with pytest.raises(NoUsableCheckpoint):
        CheckpointManager(all_corrupt, ENV).restore_latest(Trainer().state())
    records = checkpoint_health.quarantined(all_corrupt)
    assert [(r["name"], r["step"]) for r in records] == [
        (".step-000015.tmp-0123abcdef01", 15), ("step-000010", 10), ("step-000005", 5)]
    assert "unfinished" in records[0]["reason"]
    assert records[1]["reason"].startswith("model.safetensors: 100 bytes")
    assert records[2]["reason"] == "optim.pt: sha256 differs from the manifest"
    assert all(started <= r["time"] <= time.time() for r in records)
    assert all((all_corrupt / "quarantine" / r["folder"] / checkpoint_health.RECORD).is_file() for r in records)


def test_a_quarantined_folder_without_a_record_is_still_listed(tmp_path):
    (tmp_path / "quarantine" / "step-000007-0a1b2c3d").mkdir(parents=True)
    [record] = checkpoint_health.quarantined(tmp_path)
    assert (record["name"], record["step"], record["reason"]) == ("step-000007", 7, checkpoint_health.NO_RECORD)


def test_latest_is_removed_when_no_committed_checkpoint_is_left(all_corrupt):
    with pytest.raises(NoUsableCheckpoint):
        CheckpointManager(all_corrupt, ENV).restore_latest(Trainer().state())
    assert not (all_corrupt / "latest").exists()


def test_latest_naming_a_missing_folder_is_pointed_at_the_newest_committed_one(tmp_path):
    trainer = Trainer()
    manager = CheckpointManager(tmp_path, ENV)
    manager.save(5, trainer.state())
    (tmp_path / "latest").write_text("step-000099\n")
    assert CheckpointManager(tmp_path, ENV).restore_latest(Trainer().state()) == 5
    assert (tmp_path / "latest").read_text() == "step-000005\n"


def test_latest_never_names_a_missing_folder_while_corrupt_checkpoints_are_quarantined(all_corrupt, monkeypatch):
    seen = []
    quarantine = CheckpointManager._quarantine

    def watching(manager, folder, *args):
        quarantine(manager, folder, *args)
        latest = all_corrupt / "latest"
        seen.append(not latest.exists() or (all_corrupt / latest.read_text().strip()).is_dir())

    monkeypatch.setattr(CheckpointManager, "_quarantine", watching)
    with pytest.raises(NoUsableCheckpoint):
        CheckpointManager(all_corrupt, ENV).restore_latest(Trainer().state())
    assert seen == [True, True]


def test_with_fresh_start_requested_a_stage_whose_checkpoints_are_all_corrupt_starts_at_step_0(all_corrupt):
    (all_corrupt / checkpoint_health.FRESH_START).write_text("requested\n")
    assert CheckpointManager(all_corrupt, ENV).restore_latest(Trainer().state()) == 0


def test_the_fresh_start_marker_still_holds_for_an_attempt_that_fails_before_its_first_checkpoint(all_corrupt):
    (all_corrupt / checkpoint_health.FRESH_START).write_text("requested\n")
    assert CheckpointManager(all_corrupt, ENV).restore_latest(Trainer().state()) == 0
    assert CheckpointManager(all_corrupt, ENV).restore_latest(Trainer().state()) == 0
    assert (all_corrupt / checkpoint_health.FRESH_START).exists()


def test_the_fresh_start_marker_is_removed_by_the_first_new_commit(all_corrupt):
    (all_corrupt / checkpoint_health.FRESH_START).write_text("requested\n")
    trainer = Trainer()
    manager = CheckpointManager(all_corrupt, ENV)
    assert manager.restore_latest(trainer.state()) == 0
    trainer.step()
    manager.save(1, trainer.state())
    assert not (all_corrupt / checkpoint_health.FRESH_START).exists()
    assert committed_steps(all_corrupt) == [1] and (all_corrupt / "latest").read_text() == "step-000001\n"


def test_a_stage_that_never_committed_a_checkpoint_starts_at_step_0_without_asking(tmp_path):
    unfinished = tmp_path / ".step-000003.tmp-0123abcdef01"
    unfinished.mkdir()
    assert CheckpointManager(tmp_path, ENV).restore_latest(Trainer().state()) == 0

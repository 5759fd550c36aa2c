"""A training that diverged is never checkpointed: weights holding NaN or infinite values make
the save fail on every rank with `TrainingDiverged`, naming the tensor, so the newest checkpoint
stays the last good one and a resume starts from it (`launcher.runtime.finite`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launcher.runtime.checkpoint import CheckpointManager, ModuleState, TrainingDiverged, committed_steps
from launcher.runtime.distributed import single_process_env
from launcher.runtime.finite import first_non_finite
from tests.launcher_helpers import launcher, run_dir_from, training_spec, write_spec

ROOT = Path(__file__).resolve().parents[1]
ENV = single_process_env()


def test_nan_and_infinity_are_found_and_large_finite_values_and_integers_are_not():
    fine = {"half": torch.full((3,), 65504.0, dtype=torch.float16), "count": torch.tensor([2 ** 62])}
    assert first_non_finite(fine.items()) is None
    assert first_non_finite([*fine.items(), ("w", torch.tensor([1.0, float("inf")]))]) == "w"
    assert first_non_finite([("a", torch.zeros(0)), ("b", torch.tensor([float("nan")]))]) == "b"


def diverged_after_one_good_save(tmp_path) -> tuple[CheckpointManager, dict]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    state = {"model": ModuleState(model), "progress": {"step": 1}}
    manager = CheckpointManager(tmp_path, ENV)
    manager.save(1, state)
    with torch.no_grad():
        model[1].weight[0, 2] = float("nan")
    return manager, state


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "async"])
def test_a_save_of_nan_weights_is_refused_and_the_last_good_checkpoint_stays_latest(tmp_path, blocking):
    manager, state = diverged_after_one_good_save(tmp_path)
    with pytest.raises(TrainingDiverged) as refused:
        manager.save(2, state, blocking=blocking)
        manager.wait()
    message = str(refused.value)
    assert message.startswith("training diverged: checkpoint step-000002 refused")
    assert "model.1.weight holds NaN" in message and "step-000001" in message
    assert committed_steps(tmp_path) == [1] and (tmp_path / "latest").read_text().strip() == "step-000001"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


ZERO3_WORKER = """
import faulthandler, json, os, sys, torch, deepspeed
from pathlib import Path
from launcher.runtime import checkpoint, distributed

faulthandler.dump_traceback_later(200, exit=True)
root, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(1)
env = distributed.init("cpu")
model = torch.nn.Linear(64, 64)
config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3}, "steps_per_print": 10 ** 9,
          "zero_allow_untested_optimizer": True}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config,
                                  dist_init_required=False)
engine.backward(engine(torch.randn(2, 64)).square().mean())
engine.step()
state = {"engine": checkpoint.DeepSpeedState(engine), "progress": {"step": 1}}
manager = checkpoint.CheckpointManager(root, env)
manager.save(1, state)
if env.rank == 1:                                   # only rank 1's partition of the weight diverged
    with torch.no_grad():
        engine.module.weight.ds_tensor[0] = float("nan")
try:
    manager.save(2, state)
    outcome = {"error": None}
except Exception as error:
    outcome = {"error": type(error).__name__, "message": str(error)}
(out / f"rank-{env.rank}.json").write_text(json.dumps(outcome))
distributed.barrier(env)
os._exit(0)
"""


@pytest.mark.slow
def test_zero3_refuses_a_checkpoint_when_one_ranks_partition_diverged_on_every_rank_without_hanging(tmp_path):
    script, out, root = tmp_path / "worker.py", tmp_path / "out", tmp_path / "checkpoints"
    script.write_text(ZERO3_WORKER)
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(root), str(out)], env=env, timeout=300, capture_output=True, text=True)
    outcomes = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in range(2)
                if (out / f"rank-{rank}.json").exists()]
    assert len(outcomes) == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert [o["error"] for o in outcomes] == ["TrainingDiverged"] * 2
    assert outcomes[0]["message"] == outcomes[1]["message"] and "rank 1: NonFiniteWeights" in outcomes[0]["message"]
    assert committed_steps(root) == [1]


@pytest.mark.slow
def test_a_run_whose_learning_rate_blows_the_weights_up_stops_with_the_reason_and_its_last_good_checkpoint(tmp_path):
    """Adam at lr 2.5e37: step 1's weights are huge but finite, step 2's forward overflows."""
    config = {"lr": 2.5e37, "steps": 6, "dropout": 0.0, "jitter": 0.0}
    spec = write_spec(tmp_path, training_spec("diverges", "diagnose.train", config, every_steps=1, restarts=1))
    submitted = launcher("submit", str(spec), cwd=tmp_path, timeout=600)
    run = run_dir_from(submitted.stdout)
    assert submitted.returncode != 0
    checkpoints = run / "stages" / "train" / "checkpoints"
    assert committed_steps(checkpoints) == [1] and (checkpoints / "latest").read_text().strip() == "step-000001"
    status = launcher("status", run.name, cwd=tmp_path, check=True).stdout
    assert "TrainingDiverged: training diverged" in status and "model.0.weight holds NaN" in status, status

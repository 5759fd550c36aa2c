"""Resume on a different world size: a `diagnose.train` checkpoint written by 4 ranks resumes on
2 (fewer), and that one's on 3 (more) (torchrun, gloo on CPU), under DDP and ZeRO-1, -2 and -3.

After each change every fp32 parameter and Adam moment, gathered whole, equals the one gathered
from the checkpoint by the world size that wrote it, bit for bit; the data position is the same
global sample index; and the loss curve across both changes matches a run that used 3 ranks
throughout, within float tolerance (dropout and input noise off: they draw per-rank streams).
The same world size resuming bitwise equal to an uninterrupted run is the chaos tests' subject.
"""
import json
from pathlib import Path

import pytest
import torch

from tests.launcher_helpers import REPO, torchrun

WORKER = REPO / "tests" / "reshard_worker.py"
TOTAL_BATCH = 12                      # split 3 x 4 on 4 ranks, 6 + 6 on 2, 4 + 4 + 4 on 3
BASE = {"batch_size": TOTAL_BATCH // 4, "dropout": 0.0, "jitter": 0.0, "width": 33, "seed": 5}
ENGINES = {"ddp": {"engine": "ddp"},
           "zero1": {"engine": "deepspeed", "zero_stage": 1},
           "zero2": {"engine": "deepspeed", "zero_stage": 2},
           "zero3": {"engine": "deepspeed", "zero_stage": 3}}


def train_toy(ranks: int, run: Path, config: dict, steps: int, out: Path, probes: str = "start,end") -> None:
    """The toy task to STEPS on RANKS ranks in RUN; the worker writes its probes of the state to OUT."""
    torchrun(ranks, WORKER, run, json.dumps(config), steps, out, probes)


def losses(run: Path) -> dict[int, float]:
    lines = (run / "stages" / "train" / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}


def assert_same_state(after: dict, before: dict) -> None:
    assert after["step"] == before["step"] and after["progress"] == before["progress"]
    assert after["tensors"].keys() == before["tensors"].keys()
    differ = [name for name, tensor in before["tensors"].items() if not torch.equal(after["tensors"][name], tensor)]
    assert not differ, f"changed by the reshard: {differ}"


@pytest.fixture(scope="module")
def three_ranks_throughout(tmp_path_factory) -> dict[int, float]:
    run = tmp_path_factory.mktemp("reference")
    train_toy(3, run / "run", {**BASE, "batch_size": TOTAL_BATCH // 3}, 12, run / "out", probes="none")
    return losses(run / "run")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_a_checkpoint_of_4_ranks_resumes_on_2_then_on_3_with_the_same_state_samples_and_losses(
        tmp_path, engine, three_ranks_throughout):
    run, config = tmp_path / "run", {**BASE, **ENGINES[engine]}
    for phase, (ranks, steps, probes) in enumerate([(4, 4, "end"), (2, 8, "start,end"), (3, 12, "start")]):
        train_toy(ranks, run, config, steps, tmp_path / f"phase-{phase}", probes)

    for phase, written_by, read_by, step in [(1, 4, 2, 4), (2, 2, 3, 8)]:
        before = torch.load(tmp_path / f"phase-{phase - 1}" / f"end-w{written_by}.pt")
        after = torch.load(tmp_path / f"phase-{phase}" / f"start-w{read_by}.pt")
        assert before["step"] == step and before["progress"] == {"sample": step * TOTAL_BATCH,
                                                                 "total_batch": TOTAL_BATCH}
        assert_same_state(after, before)

    curve, reference = losses(run), three_ranks_throughout
    assert sorted(curve) == list(range(1, 13))
    assert curve == pytest.approx(reference, rel=1e-5, abs=1e-7)
    assert len(set(curve.values())) == 12           # a curve, not a constant


def test_a_world_size_that_does_not_divide_the_total_batch_is_refused_with_the_reason():
    from launcher.diagnose_train import TotalBatchNotKept, rank_batch

    assert rank_batch(12, 3) == 4 and rank_batch(12, 2) == 6
    with pytest.raises(TotalBatchNotKept, match="total batch of 12 samples cannot be split evenly over 5 ranks"):
        rank_batch(12, 5)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_the_fp16_loss_scaler_keeps_its_state_across_a_reshard(tmp_path, stage):
    """A ZeRO checkpoint of 2 ranks holding fp16's dynamic loss scaler (put in by hand:
    DeepSpeed's CPU accelerator refuses fp16) resumes on 3 with its scale, iteration count,
    last overflow and hysteresis."""
    worker, out = REPO / "tests" / "loss_scaler_worker.py", tmp_path / "scaler.json"
    for ranks, phase in [(2, "save"), (3, "load")]:
        torchrun(ranks, worker, tmp_path / "run", stage, phase, out)
    assert json.loads(out.read_text()) == {"type": "DynamicLossScaler", "cur_scale": 2048.0, "cur_iter": 123,
                                           "last_overflow_iter": 100, "cur_hysteresis": 1}

"""`stylenerf.train` resumed on another number of ranks continues the same run (torchrun, gloo on
CPU, 24 images per step): every random draw of a step belongs to its sample, not to the rank
computing it (`nerffacespeech.models.stylenerf.draws`), the regularisers run over every
micro-batch, and the logged losses are means over ranks.

A checkpoint of 4 ranks (6 images each) resumed on 2 (6 x 2 accumulated), 3 (8) or 4 takes the
same next step, within float rounding: the step is a lazy-regularised one (R1 and path length)
with ADA augmenting; the same holds under DeepSpeed ZeRO-2 and -3. Over 12 steps, 4 -> 2 -> 3
ranks follows a run of 3 ranks throughout within 2 %, as two uninterrupted runs of 3 and 4 ranks
follow each other: a GAN amplifies rounding
(nearest-pixel augmentations, sorted ray samples) from step to step. Before the draws followed
the samples, both curves were 58 % apart.
"""
import json
import shutil
from pathlib import Path

import pytest

from tests.launcher_helpers import REPO
from tests.train_worker import train_on

FACES = REPO / "data" / "sample" / "faces" / "lfw"
TOTAL = 24
CONFIG = {"data": str(FACES), "preset": "tiny", "workers": 0, "threads": 1, "engine": "ddp", "zero_stage": 0,
          "precision": "fp32", "batch_total": TOTAL, "model": {"mbstd_group": 2}, "r1_every": 4, "pl_every": 4,
          "augment": "ada", "augment_p": 0.3, "ada_kimg": 0.5, "ada_interval": 2, "tick_kimg": TOTAL / 1000,
          "snapshot_ticks": 1000, "metrics": []}
PER_RANK = {4: 6, 3: 8, 2: 6}           # 2 ranks accumulate two micro-batches of 6
KEYS = ("loss_g", "loss_d", "score_real", "score_fake", "pl_penalty", "r1_penalty")


ZERO = {"zero2": {"engine": "deepspeed", "zero_stage": 2}, "zero3": {"engine": "deepspeed", "zero_stage": 3}}


def train(run: Path, ranks: int, steps: int, engine: dict | None = None) -> None:
    train_on(ranks, "stylenerf", run, {**CONFIG, **(engine or {}), "batch_per_gpu": PER_RANK[ranks]}, steps)


def curve(run: Path) -> dict[int, dict]:
    lines = (run / "stages" / "train" / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines)}


def relative_gap(a: dict, b: dict, keys=KEYS) -> float:
    return max(abs(a[k] - b[k]) / abs(b[k]) for k in keys if k in b)


@pytest.fixture(scope="module")
def four_ranks_to_step_4(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("four") / "run"
    train(run, 4, 4)
    return run


@pytest.mark.slow
def test_a_checkpoint_of_4_ranks_takes_the_same_next_step_on_2_3_or_4(four_ranks_to_step_4, tmp_path):
    steps = {}
    for ranks in (4, 3, 2):
        run = tmp_path / f"on-{ranks}"
        shutil.copytree(four_ranks_to_step_4, run)
        train(run, ranks, 5)
        steps[ranks] = curve(run)[5]
    assert "r1_penalty" in steps[4] and "pl_penalty" in steps[4] and 0 < steps[4]["augment_p"] < 1
    assert relative_gap(steps[3], steps[4]) < 1e-5
    assert relative_gap(steps[2], steps[4]) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("zero, others", [("zero2", (3, 2)), ("zero3", (3,))])
def test_under_deepspeed_zero_a_checkpoint_of_4_ranks_takes_the_same_next_step_on_fewer(tmp_path, zero, others):
    """The same under ZeRO-2 and -3: G's and D's weights, EMA and Adam moments are resharded on
    load (launcher.runtime.reshard), and DeepSpeed's own accumulation counts the 2 x 6."""
    train(four := tmp_path / "four", 4, 4, ZERO[zero])
    steps = {}
    for ranks in (4, *others):
        run = tmp_path / f"on-{ranks}"
        shutil.copytree(four, run)
        train(run, ranks, 5, ZERO[zero])
        steps[ranks] = curve(run)[5]
    assert "r1_penalty" in steps[4] and "pl_penalty" in steps[4]
    for ranks in others:
        assert relative_gap(steps[ranks], steps[4]) < 1e-5, ranks


@pytest.mark.slow
def test_4_then_2_then_3_ranks_follow_a_run_of_3_ranks_throughout(four_ranks_to_step_4, tmp_path):
    resharded = tmp_path / "resharded"
    shutil.copytree(four_ranks_to_step_4, resharded)
    train(resharded, 2, 8)
    train(resharded, 3, 12)
    train(three := tmp_path / "three", 3, 12)
    train(four := tmp_path / "four", 4, 12)
    reference, plain, changed = curve(three), curve(four), curve(resharded)
    assert sorted(changed) == sorted(reference) == list(range(1, 13))
    drift = max(relative_gap(plain[s], reference[s], ("loss_g", "loss_d")) for s in reference)
    gap = max(relative_gap(changed[s], reference[s], ("loss_g", "loss_d")) for s in reference)
    assert 0 < drift < 0.02 and gap < 0.02, (gap, drift)    # 3e-3 and 5e-3 here; with per-rank draws 0.58
    assert len({round(row["loss_g"], 6) for row in reference.values()}) == 12       # a curve, not a constant

"""A training checkpoint written by N ranks and resumed on M keeps its total batch: the per-rank
batch (at most the configured one) and the gradient accumulation make it up again, so the samples
per step do not depend on how many ranks share them (`nerffacespeech.configs.kept_batch`). A world
size that cannot share the total evenly is refused with the reason and the sizes that would work.
"""
import json

import pytest
import torch

from launcher.checkpoint_health import LATEST
from nerffacespeech.configs import audio2nerf, stylenerf
from nerffacespeech.configs.kept_batch import kept_batch_total, recorded_batch, split_batch
from nerffacespeech.train.a2n_data import micro_batch_generators


def test_the_split_keeps_the_largest_per_rank_batch_the_config_allows():
    assert split_batch(8, 2, 4) == (4, 1)
    assert split_batch(8, 1, 4) == (4, 2)
    assert split_batch(12, 3, 3) == (2, 2)           # 3 per rank would make 9 or 18, never 12
    assert split_batch(16, 32, 8) is None            # fewer samples than ranks
    assert split_batch(8, 3, 4) is None


def stylenerf_config(**fields):
    parsed, problems = stylenerf.TrainConfig.parse({"data": "faces", "batch_per_gpu": 4, **fields})
    assert not problems
    return parsed


def test_a_checkpoint_of_two_ranks_resumed_on_one_accumulates_two_micro_batches():
    parsed = stylenerf_config()
    kept = kept_batch_total(parsed, parsed.resolved(1), (2, 8, "step-000004"), 1)
    assert (kept.batch_total, kept.batch_per_gpu, kept.accumulation(1)) == (8, 4, 2)


def test_a_checkpoint_of_one_rank_resumed_on_four_shrinks_the_per_rank_batch():
    parsed, _ = audio2nerf.TrainConfig.parse({"batch_per_gpu": 4})
    kept = kept_batch_total(parsed, parsed.resolved(4), (1, 4, "step-000004"), 4)
    assert (kept.batch_total, kept.batch_per_gpu, kept.accumulation(4)) == (4, 1, 1)


def test_a_batch_total_set_in_the_config_is_a_change_on_purpose():
    parsed = stylenerf_config(batch_total=4)
    assert kept_batch_total(parsed, parsed.resolved(1), (2, 8, "step-000004"), 1).batch_total == 4


def test_the_same_world_size_takes_the_config_as_it_is():
    parsed = stylenerf_config(batch_per_gpu=2)      # a smaller batch on purpose, same ranks
    assert kept_batch_total(parsed, parsed.resolved(2), (2, 8, "step-000004"), 2).batch_total == 4


def test_a_world_size_that_cannot_share_the_total_is_refused_with_what_would_work():
    parsed = stylenerf_config()
    with pytest.raises(ValueError) as refused:
        kept_batch_total(parsed, parsed.resolved(3), (2, 8, "step-000004"), 3)
    message = str(refused.value)
    assert "step-000004" in message and "8 samples per step on 2 rank(s)" in message
    assert "resume on 1, 2, 4, 8 ranks" in message and "batch_total" in message


def test_the_record_is_read_from_the_newest_committed_checkpoint(tmp_path):
    folder = tmp_path / "step-000004"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"world_size": 2, "files": {}}))
    (folder / "progress.json").write_text(json.dumps({"step": 4, "batch_total": 8}))
    assert recorded_batch(tmp_path) is None                  # nothing committed: no `latest` yet
    (tmp_path / LATEST).write_text("step-000004\n")
    assert recorded_batch(tmp_path) == (2, 8, "step-000004")
    (folder / "progress.json").write_text(json.dumps({"step": 4}))     # written before the record existed
    assert recorded_batch(tmp_path) is None


def test_the_config_check_refuses_a_resume_on_a_world_size_the_checkpoint_batch_does_not_fit(tmp_path):
    """What `launcher resume RUN --set ...` runs before changing anything: the same rule, judged
    on the stage's newest checkpoint."""
    folder = tmp_path / "step-000004"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"world_size": 2, "files": {}}))
    (folder / "progress.json").write_text(json.dumps({"step": 4, "batch_total": 8}))
    (tmp_path / LATEST).write_text("step-000004\n")
    config = {"data": "data/sample/faces/lfw", "batch_per_gpu": 4, "preset": "tiny"}
    resumed_on = {n: stylenerf.check(config, {"world_size": n, "checkpoint_dir": str(tmp_path)}) for n in (1, 3)}
    assert resumed_on[1] == []
    [(field, message)] = resumed_on[3]
    assert field == "batch_total" and message.startswith("cannot resume on 3 process(es): checkpoint step-000004")
    assert stylenerf.check(config, {"world_size": 3}) == []               # a fresh run on 3 is fine


def audio2nerf_sequences(step: int, world_size: int, accumulation: int, per_rank: int) -> list[float]:
    """A fingerprint (first draw) of every sequence of one step, over all ranks and micro-batches."""
    return sorted(float(torch.rand(1, generator=g)) for rank in range(world_size) for micro in range(accumulation)
                  for g in micro_batch_generators(0, step, micro, rank, world_size, per_rank))


def test_audio2nerf_draws_the_same_sequences_per_step_on_any_world_size():
    one_rank = audio2nerf_sequences(7, 1, 2, 4)                  # 8 sequences: 1 rank x 2 micro-batches of 4
    assert len(set(one_rank)) == 8
    assert audio2nerf_sequences(7, 2, 1, 4) == one_rank == audio2nerf_sequences(7, 4, 1, 2)
    assert audio2nerf_sequences(8, 2, 1, 4) != one_rank

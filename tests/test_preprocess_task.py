"""The sharded preprocessing task on the sample data: shards, re-runs, stops, merge, config checks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from launcher.runtime.context import TaskContext
from launcher.runtime.preemption import StopForRequeue, StopRequest
from nerffacespeech.configs.preprocess import check
from nerffacespeech.data import layout, sharding
from nerffacespeech.preprocess import task

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
FAST_FIT = {"rigid_steps": 10, "nonrigid_steps": 10, "warm_steps": 5, "batch_frames": 16}


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def _config(data=SAMPLE, **extra):
    return {"data_dir": str(data), "resolution": 64, "fit3dmm": FAST_FIT, **extra}


def _run(run_dir, shards, config, stop=None):
    for i in range(shards):
        task.run_shard(TaskContext(run_dir=run_dir, stage="preprocess", config=config,
                                   shard_index=i, shard_count=shards, device="cpu", stop=stop))
    task.merge(TaskContext(run_dir=run_dir, stage="merge", config=config))
    return run_dir / "data" / "processed"


def _outputs(out: Path) -> dict[str, bytes]:
    files = sorted(p for p in (out / "clips").rglob("*") if p.is_file())
    files += sorted((out / "metadata").glob("*.json"))
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    torch.set_num_threads(2)
    return _run(tmp_path_factory.mktemp("single"), 1, _config())


def test_every_sample_clip_is_processed_with_all_its_frames(single):
    manifest = json.loads((single / "manifest.json").read_text())
    assert manifest["counts"] == {"clips": 12, "clips_done": 12, "frames_kept": 776}
    with np.load(single / "clips" / "astronaut" / "00001" / "clip.npz") as clip:
        assert clip["frame_index"].tolist() == list(range(1, 83))
        assert clip["mel"].shape == (1 + 82 * 640 // 200, 80)
        assert clip["coeffs"].shape == (82, 257) and clip["poses"].shape == (82, 3)
    poses = json.loads((single / "metadata" / "poses.json").read_text())["frames"]
    assert len(poses) == 776 and abs(poses["astronaut/00001/00001"]["yaw"] - np.pi / 2) < 0.3


def test_three_shards_write_exactly_what_one_shard_writes(single, tmp_path):
    sharded = _run(tmp_path, 3, _config())
    assert _outputs(sharded) == _outputs(single)
    reports = [json.loads(p.read_text()) for p in sorted((sharded / "shards").glob("*-of-00003.json"))]
    keys = [item["key"] for r in reports for item in r["items"]]
    assert sorted(keys) == [c.key for c in layout.find_clips(SAMPLE)]


def test_a_stop_request_ends_the_shard_between_items_and_the_rerun_finishes_it(single, tmp_path):
    stop = StopRequest([])
    stop.request()
    out = tmp_path / "data" / "processed"
    ctx = TaskContext(run_dir=tmp_path, stage="preprocess", config=_config(), stop=stop)
    with pytest.raises(StopForRequeue):
        task.run_shard(ctx)
    assert not (out / "outcomes").exists()
    first = sorted(layout.find_clips(SAMPLE), key=lambda c: c.key)[0]
    shutil.copytree(single / "clips" / first.key, out / "clips" / first.key)         # one item done
    (out / "outcomes" / first.person).mkdir(parents=True)
    shutil.copy(single / "outcomes" / f"{first.key}.json", out / "outcomes" / f"{first.key}.json")
    done_at = (out / "outcomes" / f"{first.key}.json").stat().st_mtime_ns
    assert _outputs(_run(tmp_path, 1, _config())) == _outputs(single)
    assert (out / "outcomes" / f"{first.key}.json").stat().st_mtime_ns == done_at   # not redone


def test_a_rerun_of_a_finished_shard_does_no_work(single, tmp_path):
    shutil.copytree(single, tmp_path / "data" / "processed")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "data" / "processed" / "outcomes").rglob("*.json")}
    _run(tmp_path, 1, _config())
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_changed_settings_redo_the_items(single, tmp_path):
    shutil.copytree(single, tmp_path / "data" / "processed")
    out = _run(tmp_path, 1, _config(smooth_sigma_frames=0.0))
    with np.load(out / "clips" / "astronaut" / "00001" / "clip.npz") as clip:
        np.testing.assert_array_equal(clip["landmarks_smoothed"], clip["landmarks"])


def test_shards_are_balanced_by_frames_and_hold_whole_clips():
    clips = [layout.Clip("p", f"{i:02d}", frames=tuple(Path(f"{j}.jpg") for j in range(n)))
             for i, n in enumerate([100, 90, 50, 40, 30, 20, 10, 5])]
    shards = sharding.assign(clips, 3)
    loads = [sum(c.weight for c in s) for s in shards]
    assert sorted(c.key for s in shards for c in s) == sorted(c.key for c in clips)
    assert max(loads) - min(loads) <= 10
    assert sharding.assign(list(reversed(clips)), 3) == shards


@pytest.mark.parametrize("config, field", [
    ({"data_dir": "/no/such/folder"}, "data_dir"),
    ({"data_dir": str(SAMPLE), "resolutoin": 64}, "resolutoin"),
    ({"data_dir": str(SAMPLE), "resolution": 300}, "resolution"),
    ({"data_dir": str(SAMPLE), "landmarker": "mediapipe"}, "landmarker"),
    ({"data_dir": str(SAMPLE), "fit3dmm": {"rigid_steps": "many"}}, "fit3dmm.rigid_steps"),
    ({"resolution": 64}, "data_dir"),
])
def test_check_names_the_field_that_is_wrong(config, field):
    assert field in [f for f, _ in check(config, {})]


def test_a_config_key_typo_gets_the_close_key():
    assert dict(check({"data_dir": str(SAMPLE), "resolutoin": 64}, {}))["resolutoin"] == \
        "unknown key (did you mean 'resolution'?)"


def test_check_accepts_the_sample_config():
    assert check(_config(), {}) == []

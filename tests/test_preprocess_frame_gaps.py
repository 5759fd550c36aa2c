"""Frame timing follows the file numbers: a gap in the numbering keeps its place in time (or skips
the clip as `frame_gap`), names that are not 1-based numbers skip it as `frame_names`; never a
silent shift of the frames against the audio. Clips are copies of a sample clip with frames
deleted or renamed."""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from launcher.runtime.context import TaskContext
from nerffacespeech.configs.preprocess import PreprocessConfig, check
from nerffacespeech.preprocess import audio, task, timeline
from nerffacespeech.preprocess.errors import BadInput
from nerffacespeech.train.a2n_data import TalkingData

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SOURCE = ("lfw_003", "00001")                          # 57 frames, 57.3 frames of speech
N = 57
FAST_FIT = {"rigid_steps": 5, "nonrigid_steps": 5, "warm_steps": 2, "batch_frames": 16}


def _clip(data: Path, name: str, rename=lambda n: f"{n:05d}.jpg", drop=()) -> Path:
    """A copy of the source clip as gaps/<name>: frame n saved as rename(n), numbers in `drop` left out."""
    folder = data / "images" / "gaps" / name
    folder.mkdir(parents=True)
    for n in range(1, N + 1):
        if n not in drop:
            shutil.copy(SAMPLE / "images" / SOURCE[0] / SOURCE[1] / f"{n:05d}.jpg", folder / rename(n))
    (data / "audio" / "gaps").mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE / "audio" / SOURCE[0] / f"{SOURCE[1]}.wav", data / "audio" / "gaps" / f"{name}.wav")
    return folder


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("gaps")
    data = root / "data"
    _clip(data, "unbroken")
    _clip(data, "one_missing", drop={7})
    _clip(data, "first_missing", drop={1})
    _clip(data, "long_gap", drop=set(range(20, 26)))                     # 6 frames = 0.24 s
    _clip(data, "late_start", drop=set(range(1, 11)))
    _clip(data, "unpadded", rename=lambda n: f"{n}.jpg")
    _clip(data, "zero_based", rename=lambda n: f"{n - 1:05d}.jpg")
    _clip(data, "not_a_number", rename=lambda n: "take2.jpg" if n == 7 else f"{n:05d}.jpg")
    shutil.copy(_clip(data, "twice_seven") / "00007.jpg", data / "images" / "gaps" / "twice_seven" / "7.jpg")
    config = {"data_dir": str(data), "resolution": 64, "fit3dmm": FAST_FIT}
    task.run_shard(TaskContext(run_dir=root, stage="pre", config=config, device="cpu"))
    task.merge(TaskContext(run_dir=root, stage="merge", config=config))
    return root / "data" / "processed"


def _outcome(out: Path, name: str) -> dict:
    return json.loads((out / "outcomes" / "gaps" / f"{name}.json").read_text())


def _arrays(out: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(out / "clips" / "gaps" / name / "clip.npz") as z:
        return dict(z)


def _crop(out: Path, name: str, frame: int) -> np.ndarray:
    with zipfile.ZipFile(out / "clips" / "gaps" / name / "frames.zip") as zf:
        return np.asarray(Image.open(io.BytesIO(zf.read(f"{frame:05d}.png"))))


def _window(arrays: dict, frame: int) -> np.ndarray:
    """The mel window stored for source frame number `frame`."""
    j = arrays["frame_index"].tolist().index(frame)
    return audio.frame_window(arrays["mel"], int(arrays["mel_starts"][j]))


def test_a_missing_frame_keeps_its_place_in_time(processed):
    whole, gap = _arrays(processed, "unbroken"), _arrays(processed, "one_missing")
    assert gap["frame_index"].tolist() == [n for n in range(1, N + 1) if n != 7]
    assert int(gap["n_frames"]) == N
    np.testing.assert_array_equal(gap["mel"], whole["mel"])
    np.testing.assert_array_equal(gap["mel_starts"], audio.window_starts(N)[gap["frame_index"] - 1])
    for frame in (6, 8, 27, N):            # each file with its own landmarks and its own 40 ms of audio
        j, k = gap["frame_index"].tolist().index(frame), frame - 1
        np.testing.assert_array_equal(gap["landmarks"][j], whole["landmarks"][k])
        np.testing.assert_array_equal(_window(gap, frame), _window(whole, frame))
    np.testing.assert_array_equal(_crop(processed, "one_missing", 27), _crop(processed, "unbroken", 27))


def test_the_missing_frame_is_recorded_as_dropped_with_its_time_slot_kept(processed):
    outcome = _outcome(processed, "one_missing")
    assert (outcome["status"], outcome["frames"], outcome["kept"]) == ("done", N, N - 1)
    assert [(s["frame"], s["kind"]) for s in outcome["frame_skips"]] == [(7, "frame_missing")]
    summary = json.loads((processed / "manifest.json").read_text())["summary"]["gaps"]
    assert summary["reasons"]["frame_missing"] == 2                 # one_missing and first_missing
    landmarks = json.loads((processed / "metadata" / "landmarks.json").read_text())["frames"]
    assert "gaps/one_missing/00007" not in landmarks and "gaps/one_missing/00008" in landmarks


def test_a_clip_starting_at_frame_2_starts_40_ms_into_the_audio(processed):
    whole, late = _arrays(processed, "unbroken"), _arrays(processed, "first_missing")
    assert late["frame_index"].tolist() == list(range(2, N + 1))
    np.testing.assert_array_equal(late["landmarks"], whole["landmarks"][1:])
    np.testing.assert_array_equal(late["mel_starts"], whole["mel_starts"][1:])


@pytest.mark.parametrize("name, missing", [("long_gap", "00020-00025"), ("late_start", "00001-00010")])
def test_a_gap_longer_than_the_limit_skips_the_clip_naming_the_missing_frames(processed, name, missing):
    outcome = _outcome(processed, name)
    assert (outcome["status"], outcome["kind"]) == ("skipped", "frame_gap")
    assert f"gaps/{name}" in outcome["detail"] and missing in outcome["detail"]
    assert not (processed / "clips" / "gaps" / name).exists()
    manifest = json.loads((processed / "manifest.json").read_text())
    assert {"key": f"gaps/{name}", "kind": "frame_gap"}.items() <= \
        next(c for c in manifest["clips"] if c["key"] == f"gaps/{name}").items()


def test_unpadded_numbers_are_ordered_by_number_not_by_name(processed):
    whole, unpadded = _arrays(processed, "unbroken"), _arrays(processed, "unpadded")
    assert unpadded.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(unpadded[key], whole[key], err_msg=key)


@pytest.mark.parametrize("name, words", [("zero_based", "00000.jpg"), ("not_a_number", "take2.jpg"),
                                         ("twice_seven", "7.jpg")])
def test_names_that_are_not_one_based_frame_numbers_skip_the_clip(processed, name, words):
    outcome = _outcome(processed, name)
    assert (outcome["status"], outcome["kind"]) == ("skipped", "frame_names")
    assert f"gaps/{name}" in outcome["detail"] and words in outcome["detail"]


def test_audio2nerf_pairs_each_frame_of_a_gapped_clip_with_its_own_audio(processed):
    data = TalkingData(processed, 64, holdout=0.2)
    clips = {c.key: c for c in data.clips}
    whole, gap = clips["gaps/unbroken"], clips["gaps/one_missing"]
    assert len(gap.mel) == N - 1
    for frame in (6, 8, 27):
        j = frame - 1 - (frame > 7)
        torch.testing.assert_close(gap.mel[j], whole.mel[frame - 1], rtol=0, atol=0)


@pytest.mark.parametrize("numbers, longest", [([1, 2, 4, 5], 1), ([1, 7, 8], 5), ([3, 4], 2), ([1, 2, 3], 0)])
def test_gaps_up_to_the_limit_keep_their_place(numbers, longest):
    frames = timeline.number_frames("p/c", [Path(f"{n:05d}.jpg") for n in numbers], max_gap=5)
    assert frames.numbers == numbers and frames.length == numbers[-1]
    assert frames.missing == sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
    assert max((b - a + 1 for a, b in timeline.runs(frames.missing)), default=0) == longest


def test_a_gap_one_past_the_limit_is_refused():
    with pytest.raises(BadInput) as refused:
        timeline.number_frames("p/c", [Path("00001.jpg"), Path("00008.jpg")], max_gap=5)
    assert refused.value.kind == "frame_gap" and "00002-00007" in refused.value.detail
    with pytest.raises(BadInput, match="frame_gap"):
        timeline.number_frames("p/c", [Path("00001.jpg"), Path("00003.jpg")], max_gap=0)


def test_max_frame_gap_is_a_checked_setting_of_the_fingerprint():
    assert PreprocessConfig.parse({"data_dir": "d"})[0].max_frame_gap == 5
    assert [f for f, _ in check({"data_dir": str(SAMPLE), "max_frame_gap": -1}, {})] == ["max_frame_gap"]
    assert [f for f, _ in check({"data_dir": str(SAMPLE), "max_frame_gap": 1.5}, {})] == ["max_frame_gap"]
    changed = PreprocessConfig.parse({"data_dir": "d", "max_frame_gap": 2})[0]
    assert changed.fingerprint_fields() != PreprocessConfig.parse({"data_dir": "d"})[0].fingerprint_fields()

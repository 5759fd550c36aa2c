"""A corpus of broken inputs: each is recorded with its reason and skipped; good items around it are kept."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from skimage import data as skdata

from launcher.runtime.context import TaskContext
from nerffacespeech.preprocess import task, video

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
N = 10                                                  # frames per test clip


def _good_clip(root: Path, person: str, source: str = "lfw_003", frames: int = N) -> Path:
    folder = root / "images" / person
    folder.mkdir(parents=True)
    for i in range(1, frames + 1):
        shutil.copy(SAMPLE / "images" / source / "00001" / f"{i:05d}.jpg", folder / f"{i:05d}.jpg")
    speech, _ = soundfile.read(SAMPLE / "audio" / source / "00001.wav")
    (root / "audio" / person).mkdir(parents=True)
    soundfile.write(root / "audio" / person / "00001.wav", speech[:frames * 640], 16000)
    return folder


def _jpeg(array, mode=None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="JPEG")
    return buffer.getvalue()


def _corpus(root: Path) -> dict[str, str]:
    """Builds the corpus; returns clip or frame → the reason it must be skipped for."""
    expected = {}
    frame = np.asarray(Image.open(SAMPLE / "images" / "lfw_003" / "00001" / "00001.jpg"))
    bad = _good_clip(root, "bad_frames", frames=20)
    nonface = cv2.resize((skdata.lfw_subset()[150] * 255).astype(np.uint8), (256, 256))
    two = np.hstack([frame, np.asarray(Image.open(SAMPLE / "images" / "lfw_008" / "00001" / "00001.jpg"))])
    cv2.imwrite(str(root / "tmp16.png"), (frame.astype(np.uint16) * 257)[..., ::-1])
    frame_faults = {
        2: ("image_unreadable", b"this is not an image"),
        4: ("image_unreadable", b""),
        6: ("image_truncated", _jpeg(frame)[:3000]),
        8: ("image_grayscale", _jpeg(frame, "L")),
        10: ("image_cmyk", _jpeg(frame, "CMYK")),
        12: ("image_16bit", (root / "tmp16.png").read_bytes()),
        14: ("image_too_small", _jpeg(frame[::8, ::8].copy())),
        16: ("no_face", _jpeg(np.dstack([nonface] * 3))),
        18: ("several_faces", _jpeg(two)),
    }
    for index, (kind, data) in frame_faults.items():
        (bad / f"{index:05d}.jpg").write_bytes(data)
        expected[f"bad_frames/00001#{index}"] = kind

    def clip_with_audio(person, kind, write):
        _good_clip(root, person)
        write(root / "audio" / person / "00001.wav")
        expected[f"{person}/00001"] = kind

    clip_with_audio("empty_wav", "audio_empty", lambda p: p.write_bytes(b""))
    clip_with_audio("corrupt_wav", "audio_corrupt", lambda p: p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage"))
    clip_with_audio("stereo_wav", "audio_channels", lambda p: soundfile.write(p, np.full((N * 640, 2), 0.1), 16000))
    clip_with_audio("odd_rate_wav", "audio_sample_rate", lambda p: soundfile.write(p, np.full(N * 480, 0.1), 12000))
    clip_with_audio("silent_wav", "audio_silent", lambda p: soundfile.write(p, np.zeros(N * 640), 16000))
    clip_with_audio("short_wav", "av_mismatch", lambda p: soundfile.write(
        p, soundfile.read(SAMPLE / "audio" / "lfw_003" / "00001.wav")[0][:N * 320], 16000))
    _good_clip(root, "no_wav")
    shutil.rmtree(root / "audio" / "no_wav")
    expected["no_wav/00001"] = "layout"
    faceless = _good_clip(root, "faceless")
    for p in faceless.iterdir():
        p.write_bytes(_jpeg(np.dstack([nonface] * 3)))
    expected["faceless/00001"] = "too_many_bad_frames"
    (root / "videos" / "broken").mkdir(parents=True)
    (root / "videos" / "broken" / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    expected["broken/garbage"] = "video_corrupt"
    (root / "videos" / "mute").mkdir(parents=True)
    subprocess.run([video.ffmpeg(), "-v", "error", "-framerate", "25", "-i",
                    str(SAMPLE / "images" / "lfw_003" / "00001" / "%05d.jpg"), "-frames:v", str(N),
                    "-pix_fmt", "yuv420p", str(root / "videos" / "mute" / "silent_film.mp4")], check=True)
    expected["mute/silent_film"] = "video_no_audio"
    (root / "tmp16.png").unlink()
    return expected


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("corpus")
    data = root / "data"
    expected = _corpus(data)
    _good_clip(data, "good_a", "astronaut")
    _good_clip(data, "good_b", "lfw_008")
    (data / "videos" / "good_c").mkdir(parents=True)
    subprocess.run([video.ffmpeg(), "-v", "error", "-framerate", "25", "-i", str(SAMPLE / "images" / "lfw_008" / "00001" / "%05d.jpg"),
                    "-i", str(SAMPLE / "audio" / "lfw_008" / "00001.wav"), "-frames:v", str(N), "-t", str(N / 25),
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(data / "videos" / "good_c" / "talk.mp4")], check=True)
    config = {"data_dir": str(data), "resolution": 64, "max_bad_frame_fraction": 0.5,
              "fit3dmm": {"rigid_steps": 5, "nonrigid_steps": 5, "warm_steps": 2}}
    for shard in range(2):
        task.run_shard(TaskContext(run_dir=root, stage="pre", config=config, shard_index=shard, shard_count=2))
    task.merge(TaskContext(run_dir=root, stage="merge", config=config))
    return root / "data" / "processed", expected


def test_the_corpus_has_at_least_fifteen_kinds_of_broken_input(processed):
    _, expected = processed
    assert len(set(expected.values())) >= 15


def test_every_broken_clip_is_recorded_as_skipped_with_its_reason(processed):
    out, expected = processed
    for key, kind in expected.items():
        if "#" in key:
            continue
        outcome = json.loads((out / "outcomes" / f"{key}.json").read_text())
        assert (outcome["status"], outcome["kind"]) == ("skipped", kind), key
        assert outcome["detail"]


def test_every_broken_frame_is_dropped_with_its_reason_and_the_rest_kept(processed):
    out, expected = processed
    outcome = json.loads((out / "outcomes" / "bad_frames" / "00001.json").read_text())
    skipped = {f"bad_frames/00001#{s['frame']}": s["kind"] for s in outcome["frame_skips"]}
    assert skipped == {k: v for k, v in expected.items() if "#" in k}
    with np.load(out / "clips" / "bad_frames" / "00001" / "clip.npz") as clip:
        assert clip["frame_index"].tolist() == [i for i in range(1, 21) if i % 2 or i > 18]


def test_good_clips_around_the_broken_ones_are_all_processed(processed):
    out, _ = processed
    manifest = json.loads((out / "manifest.json").read_text())
    done = {c["key"]: c["kept"] for c in manifest["clips"] if c["status"] == "done"}
    assert done == {"good_a/00001": N, "good_b/00001": N, "good_c/talk": N, "bad_frames/00001": 11}


def test_the_summary_counts_kept_frames_and_reasons_per_identity(processed):
    out, _ = processed
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["bad_frames"]["frames_kept"] == 11 and summary["bad_frames"]["frames_dropped"] == 9
    assert summary["silent_wav"] == {"clips_done": 0, "clips_skipped": 1, "frames_kept": 0,
                                     "frames_dropped": 0, "reasons": {"audio_silent": 1}}

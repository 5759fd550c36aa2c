"""The bundled sample dataset: layout, sizes, agreement of audio and frames, reproducibility."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
PEOPLE = ("astronaut", "lfw_003", "lfw_008")
CLIPS = [(person, f"{c:05d}") for person in PEOPLE for c in range(1, 5)]      # four sentences each


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_sample_data.py"
    spec = importlib.util.spec_from_file_location("make_sample_data", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_sample_is_twelve_clips_of_three_people():
    found = sorted((p.parent.name, p.name) for p in (SAMPLE / "images").glob("*/*") if p.is_dir())
    assert found == CLIPS
    assert sorted(p.relative_to(SAMPLE / "audio").as_posix() for p in (SAMPLE / "audio").rglob("*.wav")) == \
        [f"{person}/{clip}.wav" for person, clip in CLIPS]


def test_every_clip_has_frames_and_a_16khz_mono_wav_of_the_same_length():
    for person, clip in CLIPS:
        frames = sorted((SAMPLE / "images" / person / clip).glob("*.jpg"))
        info = soundfile.info(SAMPLE / "audio" / person / f"{clip}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 50 <= len(frames) <= 100
        assert [f.name for f in frames] == [f"{i:05d}.jpg" for i in range(1, len(frames) + 1)]
        assert len(frames) == round(info.frames / 16000 * 25)


def test_frames_are_256px_rgb_and_gan_faces_are_100_rgb_64px():
    for person, clip in CLIPS:
        with Image.open(SAMPLE / "images" / person / clip / "00001.jpg") as im:
            assert (im.mode, im.size) == ("RGB", (256, 256))
    faces = sorted((SAMPLE / "faces" / "lfw").glob("*.png"))
    assert len(faces) == 100
    with Image.open(faces[0]) as im:
        assert (im.mode, im.size) == ("RGB", (64, 64))


def test_speech_is_not_silent():
    for person, clip in CLIPS:
        audio, _ = soundfile.read(SAMPLE / "audio" / person / f"{clip}.wav")
        assert np.sqrt(np.mean(audio ** 2)) > 0.02


def test_sample_stays_small():
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 10_000_000


def test_every_bundled_kind_of_file_is_documented():
    sources = (SAMPLE / "SOURCES.md").read_text()
    for needle in ("astronaut()", "lfw_subset()", "espeak-ng", *PEOPLE, "faces/lfw", "licence"):
        assert needle in sources


@pytest.mark.slow
def test_frames_regenerate_from_the_committed_wavs(tmp_path):
    script = _script()
    shutil.copytree(SAMPLE / "audio", tmp_path / "audio")
    script.make(tmp_path, reuse_audio=True)
    for person, clip in CLIPS:
        for committed in sorted((SAMPLE / "images" / person / clip).glob("*.jpg"))[::10]:
            fresh = np.asarray(Image.open(tmp_path / "images" / person / clip / committed.name), np.int16)
            assert np.abs(fresh - np.asarray(Image.open(committed), np.int16)).mean() < 1.0

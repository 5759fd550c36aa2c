"""A whole clip from the tiny talking head and real speech: the MP4 and its contact sheet."""
import numpy as np
import pytest
from PIL import Image

from nerffacespeech.configs.generate import GenerateConfig
from nerffacespeech.generate.pipeline import generate
from tests.generate_helpers import SPEECH, audio_seconds, files_in, random_tiny_head, video_frames


@pytest.fixture(scope="module")
def random_head():
    return random_tiny_head()


@pytest.mark.slow
def test_clip_decodes_at_25_fps_with_a_frame_per_40_ms_and_the_speech_muxed(tmp_path, random_head):
    cfg, _ = GenerateConfig.parse({"audio": str(SPEECH), "seeds": [3], "camera": "gentle", "device": "cpu"})
    clip, = generate(cfg, tmp_path, head=random_head)
    speech_seconds = 52576 / 16000
    fps, frames = video_frames(clip.video)
    assert fps == 25 and abs(len(frames) - speech_seconds * 25) <= 1 and frames.shape[1:] == (32, 32, 3)
    assert abs(audio_seconds(clip.video) - len(frames) / 25) < 0.04
    assert np.abs(np.diff(frames.astype(int), axis=0)).mean() > 0         # the camera moves: frames differ
    assert Image.open(clip.sheet).size == (4 * 32, 2 * 32)
    assert files_in(tmp_path) == ["seed0003-sheet.png", "seed0003.mp4"]

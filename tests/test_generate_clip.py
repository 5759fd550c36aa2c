"""A whole clip from the tiny talking head and real speech: the MP4 and its contact sheet."""
import numpy as np
import pytest
import torch
from PIL import Image

from nerffacespeech.configs.audio2nerf import ModelConfig
from nerffacespeech.configs.generate import GenerateConfig
from nerffacespeech.generate.pipeline import generate
from nerffacespeech.models.audio2nerf import generator_source
from nerffacespeech.models.audio2nerf.face import load_face_basis
from nerffacespeech.models.audio2nerf.network import Audio2NeRF
from nerffacespeech.models.audio2nerf.talking_head import TalkingHead
from tests.generate_helpers import SPEECH, audio_seconds, files_in, video_frames


@pytest.fixture(scope="module")
def random_head():
    """The tiny preset's talking head at random initialisation (the public constructor)."""
    torch.manual_seed(0)
    generator = generator_source.build({"kind": "random", "preset": "tiny", "model": {}, "seed": 0})
    net = Audio2NeRF(ModelConfig(nerf_dim=generator.cfg.w_dim, encoder_width=0.25))
    return TalkingHead(net, generator, load_face_basis("synthetic"), "tiny", torch.device("cpu"))


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

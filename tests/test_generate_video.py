"""The MP4 writer: H.264 at 25 fps with the speech muxed in, committed only when complete."""
import numpy as np
import pytest

from nerffacespeech.generate import speech, video
from tests.generate_helpers import SPEECH, audio_seconds, files_in, video_frames


def _clip(path, n_frames, audio, size=32):
    with video.Mp4Writer(path, size, audio, n_frames) as writer:
        for start in range(0, n_frames, 8):
            count = min(8, n_frames - start)
            writer.write(np.full((count, size, size, 3), start * 3 % 255, np.uint8))


def test_mp4_has_25_fps_every_frame_and_audio_of_the_same_length(tmp_path):
    audio = speech.load_audio(SPEECH, 120, -50)
    n = speech.frame_count(audio)
    _clip(tmp_path / "clip.mp4", n, audio)
    fps, frames = video_frames(tmp_path / "clip.mp4")
    assert fps == 25 and abs(len(frames) - len(audio) / 16000 * 25) <= 1
    assert abs(audio_seconds(tmp_path / "clip.mp4") - n / 25) < 0.04
    assert files_in(tmp_path) == ["clip.mp4"]


def test_an_error_while_encoding_leaves_no_file_behind(tmp_path):
    audio = speech.load_audio(SPEECH, 120, -50)
    with pytest.raises(ZeroDivisionError):
        with video.Mp4Writer(tmp_path / "clip.mp4", 32, audio, 82) as writer:
            writer.write(np.zeros((8, 32, 32, 3), np.uint8))
            1 / 0
    assert files_in(tmp_path) == []


def test_contact_sheet_spreads_frames_over_the_clip(tmp_path):
    assert video.sheet_indices(82, 8) == [0, 12, 23, 35, 46, 58, 69, 81]
    frames = [np.full((32, 32, 3), i, np.uint8) for i in range(8)]
    video.write_contact_sheet(tmp_path / "sheet.png", frames)
    from PIL import Image

    assert Image.open(tmp_path / "sheet.png").size == (128, 64)

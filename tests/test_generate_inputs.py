"""Bad inputs to `python -m nerffacespeech.generate`: each a clear error and no output file."""
import subprocess

import numpy as np
import pytest
import soundfile

from nerffacespeech.generate import speech
from nerffacespeech.generate.__main__ import main
from nerffacespeech.preprocess.video import ffmpeg
from tests.generate_helpers import SPEECH, files_in


def _run(tmp_path, capsys, *flags):
    out = tmp_path / "out"
    code = main(["--outdir", str(out), "--audio2nerf", str(tmp_path / "none.ckpt"), *flags])
    return code, capsys.readouterr().err, files_in(out)


def test_missing_audio(tmp_path, capsys):
    code, err, left = _run(tmp_path, capsys, "--test_data", str(tmp_path / "nope.wav"))
    assert code == 1 and "audio_missing" in err and "nope.wav does not exist" in err and left == []


def test_corrupt_audio(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + np.random.default_rng(0).bytes(4000))
    code, err, left = _run(tmp_path, capsys, "--test_data", str(bad))
    assert code == 1 and "audio_corrupt: bad.wav cannot be decoded" in err and left == []


def test_silent_audio(tmp_path, capsys):
    quiet = tmp_path / "quiet.wav"
    soundfile.write(quiet, np.zeros(16000, np.float32), 16000)
    code, err, left = _run(tmp_path, capsys, "--test_data", str(quiet))
    assert code == 1 and "audio_silent: quiet.wav is silent" in err and left == []


def test_audio_longer_than_the_limit(tmp_path, capsys):
    code, err, left = _run(tmp_path, capsys, "--test_data", str(SPEECH), "--max-audio-seconds", "2")
    assert code == 1 and "audio_too_long: 00001.wav lasts 3.3 s; the limit is 2 s" in err and left == []


def test_missing_checkpoint(tmp_path, capsys):
    code, err, left = _run(tmp_path, capsys, "--test_data", str(SPEECH))
    assert code == 1 and "checkpoint_missing" in err and "none.ckpt does not exist" in err and left == []


def test_bad_flag_values_name_the_flag(tmp_path, capsys):
    code, err, left = _run(tmp_path, capsys, "--test_data", str(SPEECH), "--trunc", "1.5", "--batch-size", "0")
    assert code == 2 and "--trunc: must be in [0, 1], got 1.5" in err and "--batch-size: must be at least 1" in err
    assert left == []


@pytest.mark.parametrize("suffix, codec", [(".m4a", "aac"), (".flac", "flac")])
def test_any_format_and_rate_becomes_16k_mono(tmp_path, suffix, codec):
    other = tmp_path / f"speech{suffix}"
    subprocess.run([ffmpeg(), "-v", "error", "-i", str(SPEECH), "-ac", "2", "-ar", "44100", "-c:a", codec,
                    str(other)], check=True)
    original = speech.load_audio(SPEECH, 120, -50)
    converted = speech.load_audio(other, 120, -50)
    assert abs(len(converted) - len(original)) < 0.05 * 16000
    assert speech.frame_count(converted) in range(speech.frame_count(original) - 1, speech.frame_count(original) + 2)

"""Speech for generation: any audio file → checked 16 kHz mono, and its length in video frames.

libsndfile reads WAV/FLAC/OGG/MP3 and is resampled exactly as preprocessing does (so features
match training); anything else (m4a, aac, opus in mp4, a video's audio) goes through the ffmpeg
of imageio-ffmpeg.
"""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import soundfile

from nerffacespeech.preprocess import audio as features
from nerffacespeech.preprocess.errors import BadInput
from nerffacespeech.preprocess.video import ffmpeg

FPS = 25


def load_audio(path: Path, max_seconds: float, silence_dbfs: float) -> np.ndarray:
    """float32 mono speech at 16 kHz; BadInput if missing, undecodable, silent or too long."""
    path = features.existing_audio(path)
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        speech = features.to_16k(audio.mean(axis=1), rate)
    except (soundfile.LibsndfileError, RuntimeError, ValueError):
        speech = _decode_with_ffmpeg(path)
    if len(speech) == 0:
        raise BadInput("audio_empty", f"{path.name} has no samples")
    if not np.isfinite(speech).all():
        raise BadInput("audio_corrupt", f"{path.name} holds non-finite samples")
    seconds = len(speech) / features.SAMPLE_RATE
    if seconds > max_seconds:
        raise BadInput("audio_too_long", f"{path.name} lasts {seconds:.1f} s; the limit is {max_seconds:g} s "
                                         "(max_audio_seconds)")
    level = 20 * math.log10(float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) + 1e-12)
    if level < silence_dbfs:
        raise BadInput("audio_silent", f"{path.name} is silent ({level:.1f} dBFS < {silence_dbfs:g})")
    return speech


def _decode_with_ffmpeg(path: Path) -> np.ndarray:
    done = subprocess.run([ffmpeg(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
                           "-ac", "1", "-ar", str(features.SAMPLE_RATE), "-f", "f32le", "-"], capture_output=True)
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1][:200]
        raise BadInput("audio_corrupt", f"{path.name} cannot be decoded ({last})")
    return np.frombuffer(done.stdout, dtype="<f4").astype(np.float32)


def frame_count(speech: np.ndarray) -> int:
    """Video frames at 25 fps for the speech's length (rounded)."""
    return max(1, round(len(speech) * FPS / features.SAMPLE_RATE))

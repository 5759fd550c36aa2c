"""Mel features and frame windows against a straightforward reference, on real speech."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

from nerffacespeech.preprocess import audio
from nerffacespeech.preprocess.errors import BadInput

SPEECH = Path(__file__).resolve().parents[1] / "data" / "sample" / "audio" / "astronaut" / "00001.wav"


def _hz_to_mel(f):
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / math.log(6.4))


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15, 200 * m / 3, 1000 * np.exp(math.log(6.4) / 27 * (m - 15)))


def _reference_filters():
    """Triangular filters between mel-spaced edges, each scaled to unit area (Slaney norm)."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(55), _hz_to_mel(7600), 82))
    bins = np.arange(401) * 16000 / 800
    filters = np.zeros((80, 401))
    for m in range(80):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(bins):
            up = (f - lo) / (mid - lo)
            down = (hi - f) / (hi - mid)
            filters[m, k] = max(0.0, min(up, down)) * 2 / (hi - lo)
    return filters


def _reference_log_mel(wav):
    """Pre-emphasis, framing, DFT, mel, dB and scaling written out one step at a time."""
    y = np.empty(len(wav))
    y[0] = wav[0]
    for n in range(1, len(wav)):
        y[n] = wav[n] - 0.97 * wav[n - 1]
    padded = np.concatenate([y[400:0:-1], y, y[-2:-402:-1]])          # reflect, no edge repeat
    window = 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(800) / 800)   # periodic Hann
    filters = _reference_filters()
    out = []
    for t in range(1 + len(wav) // 200):
        spectrum = np.abs(np.fft.rfft(padded[t * 200:t * 200 + 800] * window))
        db = 20 * np.log10(np.maximum(1e-5, filters @ spectrum)) - 20
        out.append(np.clip(8 * (db + 100) / 100 - 4, -4, 4))
    return np.array(out)


@pytest.fixture(scope="module")
def speech():
    wav, rate = soundfile.read(SPEECH, dtype="float32")
    assert rate == 16000
    return wav


def test_log_mel_matches_the_reference_on_real_speech(speech):
    clip = speech[:16000]
    mel = audio.log_mel(clip)
    assert mel.shape == (81, 80) and mel.dtype == np.float32
    np.testing.assert_allclose(mel, _reference_log_mel(clip.astype(np.float64)), atol=1e-5, rtol=0)


def test_log_mel_spans_the_scaled_range(speech):
    mel = audio.log_mel(speech)
    assert mel.min() >= -4 and mel.max() <= 4 and mel.max() - mel.min() > 4


def test_window_starts_follow_sadtalker_including_truncation_toward_zero():
    assert audio.window_starts(6).tolist() == [int(80 * (i - 2) / 25) for i in range(6)]
    assert audio.window_starts(3).tolist() == [-6, -3, 0]


def test_frame_windows_clamp_each_index_at_the_edges(speech):
    n_frames = 40
    mel = audio.log_mel(audio.fit_to_frames(speech, n_frames))
    windows = audio.frame_windows(mel, n_frames)
    assert windows.shape == (40, 16, 80)
    for i, start in enumerate(audio.window_starts(n_frames)):
        rows = [min(max(j, 0), len(mel) - 1) for j in range(start, start + 16)]
        np.testing.assert_array_equal(windows[i], mel[rows])
        np.testing.assert_array_equal(audio.frame_window(mel, int(start)), mel[rows])


def test_inner_windows_are_views_of_the_clip_features(speech):
    mel = audio.log_mel(speech[:32000])
    assert np.shares_memory(audio.frame_window(mel, 10), mel)


def test_fit_to_frames_gives_exactly_640_samples_per_frame(speech):
    assert len(audio.fit_to_frames(speech, 10)) == 6400
    assert len(audio.fit_to_frames(speech, 1000)) == 640_000


def test_22khz_speech_is_resampled_to_16khz(speech, tmp_path):
    path = tmp_path / "s.wav"
    soundfile.write(path, audio.to_16k(speech, 16000)[:22050], 22050)
    assert len(audio.load_speech(path)) == 16000


@pytest.mark.parametrize("kind, make", [
    ("audio_empty", lambda p: p.write_bytes(b"")),
    ("audio_corrupt", lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")),
    ("audio_channels", lambda p: soundfile.write(p, np.zeros((1600, 2)) + 0.1, 16000)),
    ("audio_sample_rate", lambda p: soundfile.write(p, np.full(800, 0.1), 8000)),
    ("audio_silent", lambda p: soundfile.write(p, np.zeros(16000), 16000)),
])
def test_bad_speech_is_refused_with_its_reason(tmp_path, kind, make):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(BadInput) as caught:
        audio.load_speech(path)
    assert caught.value.kind == kind

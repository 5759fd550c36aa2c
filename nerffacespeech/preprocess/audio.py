"""Speech in, SadTalker-compatible log-mel features out, plus the per-video-frame windows.

Features follow SadTalker/Wav2Lip's `audio.melspectrogram` at 16 kHz: pre-emphasis 0.97,
STFT n_fft 800 / hop 200 / win 800 (Hann, centred, reflect padding as librosa 0.9 did),
80 Slaney mel bins 55-7600 Hz, dB with min -100 and ref 20, scaled symmetrically to [-4, 4].
Video frame i at 25 fps reads 16 mel frames starting at int(80·(i−2)/25), clamped per index.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import lfilter, resample_poly

from .errors import BadInput

SAMPLE_RATE = 16_000
PREEMPHASIS = 0.97
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS = 4.0
MEL_FPS = SAMPLE_RATE / HOP          # 80 mel frames per second
WINDOW = 16                          # mel frames per video frame
FRAME_OFFSET = 2                     # a window starts two video frames before its frame


def existing_audio(path: str | Path) -> Path:
    """`path` as a Path; BadInput when the file is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise BadInput("audio_missing", f"{path} does not exist")
    if path.stat().st_size == 0:
        raise BadInput("audio_empty", f"{path.name} is an empty file")
    return path


def load_speech(path: Path, accepted_rates: tuple[int, ...] = (16_000, 22_050),
                silence_dbfs: float = -50.0) -> np.ndarray:
    """Read a mono WAV, check it and return float32 at 16 kHz; raises BadInput with the reason."""
    path = existing_audio(path)
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise BadInput("audio_corrupt", f"{path.name} cannot be decoded: {exc}") from None
    if audio.shape[0] == 0:
        raise BadInput("audio_empty", f"{path.name} has no samples")
    if audio.shape[1] != 1:
        raise BadInput("audio_channels", f"{path.name} has {audio.shape[1]} channels; mono expected")
    if rate not in accepted_rates:
        raise BadInput("audio_sample_rate", f"{path.name} is {rate} Hz; accepted: {list(accepted_rates)}")
    audio = audio[:, 0]
    if not np.isfinite(audio).all():
        raise BadInput("audio_corrupt", f"{path.name} holds non-finite samples")
    level = 20 * math.log10(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) + 1e-12)
    if level < silence_dbfs:
        raise BadInput("audio_silent", f"{path.name} is silent ({level:.1f} dBFS < {silence_dbfs})")
    return to_16k(audio, rate)


def to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """Polyphase resampling to 16 kHz (exact rational ratio)."""
    if rate == SAMPLE_RATE:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(SAMPLE_RATE, rate)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def fit_to_frames(audio: np.ndarray, n_frames: int, fps: int = 25) -> np.ndarray:
    """Crop or zero-pad speech to exactly n_frames video frames, as SadTalker does."""
    n = round(n_frames * SAMPLE_RATE / fps)
    return audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))


def mel_filterbank() -> np.ndarray:
    """(80, 401) Slaney-normalised mel filters, the same matrix as librosa.filters.mel's default."""
    import librosa   # imported here: its import is slow and only this needs it

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)


def log_mel(audio: np.ndarray, filters: np.ndarray | None = None) -> np.ndarray:
    """(T, 80) float32 log-mel in [-4, 4] for 16 kHz speech; T = 1 + len(audio) // 200."""
    x = lfilter([1.0, -PREEMPHASIS], [1.0], audio.astype(np.float64))
    x = np.pad(x, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
    window = np.hanning(WIN + 1)[:-1]                       # periodic Hann, as scipy/librosa
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1))
    mel = magnitude @ (mel_filterbank() if filters is None else filters).T
    min_level = 10 ** (MIN_LEVEL_DB / 20)
    db = 20 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS * (db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB) - MAX_ABS
    return np.clip(scaled, -MAX_ABS, MAX_ABS).astype(np.float32)


def window_starts(n_frames: int, fps: int = 25) -> np.ndarray:
    """First mel frame of each video frame's window: int(80·(i−2)/fps), truncated toward zero."""
    i = np.arange(n_frames, dtype=np.float64)
    return np.trunc(MEL_FPS * (i - FRAME_OFFSET) / fps).astype(np.int64)


def frame_window(mel: np.ndarray, start: int) -> np.ndarray:
    """(16, 80) window of mel frames from `start`, indices clamped to the clip: a view inside it."""
    if 0 <= start and start + WINDOW <= len(mel):
        return mel[start:start + WINDOW]
    return mel[np.clip(np.arange(start, start + WINDOW), 0, len(mel) - 1)]


def frame_windows(mel: np.ndarray, n_frames: int, fps: int = 25) -> np.ndarray:
    """(n_frames, 16, 80) windows for every video frame, all at once (edge rows repeated)."""
    starts = window_starts(n_frames, fps)
    index = np.clip(starts[:, None] + np.arange(WINDOW)[None, :], 0, len(mel) - 1)
    return mel[index]

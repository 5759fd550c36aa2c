"""What the generation tests share: the sample speech, and reading back an MP4's streams."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from nerffacespeech.preprocess.video import ffmpeg

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "data" / "sample" / "audio" / "astronaut" / "00001.wav"     # 3.29 s, 16 kHz mono


def video_frames(path: Path) -> tuple[float, np.ndarray]:
    """The MP4's frame rate and its decoded (N, H, W, 3) frames."""
    import imageio.v2 as iio

    with iio.get_reader(str(path), "ffmpeg") as reader:
        fps = reader.get_meta_data()["fps"]
        return fps, np.stack(list(reader.iter_data()))


def audio_seconds(path: Path) -> float:
    """Duration of the MP4's audio stream, by decoding it."""
    done = subprocess.run([ffmpeg(), "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", "16000",
                           "-f", "f32le", "-"], capture_output=True, check=True)
    return len(done.stdout) / 4 / 16000


def files_in(folder: Path) -> list[str]:
    """Every entry of a folder, hidden temporaries included."""
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []

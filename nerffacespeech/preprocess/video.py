"""Talking-head videos → frames at 25 fps and 16 kHz mono speech, with the ffmpeg of imageio-ffmpeg."""
from __future__ import annotations

import subprocess
from pathlib import Path

from .errors import BadInput


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def extract(video: Path, out_dir: Path, fps: int = 25) -> tuple[list[Path], Path]:
    """Write out_dir/frames/00001.png … and out_dir/speech.wav; BadInput if either is impossible."""
    frames_dir = out_dir / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    wav = out_dir / "speech.wav"
    _run([ffmpeg(), "-nostdin", "-v", "error", "-y", "-i", str(video), "-map", "0:v:0",
          "-vf", f"fps={fps}", "-start_number", "1", str(frames_dir / "%05d.png")],
         "video_corrupt", f"{video.name}: no decodable video stream")
    _run([ffmpeg(), "-nostdin", "-v", "error", "-y", "-i", str(video), "-map", "0:a:0", "-vn",
          "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(wav)],
         "video_no_audio", f"{video.name}: no decodable audio stream")
    frames = sorted(frames_dir.glob("*.png"))
    if not frames:
        raise BadInput("video_corrupt", f"{video.name}: no frames decoded")
    return frames, wav


def _run(command: list[str], kind: str, detail: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1][:200]
        raise BadInput(kind, f"{detail} ({last})")

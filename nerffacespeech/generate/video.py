"""H.264 MP4 with the speech muxed in, written atomically, and the contact sheet PNG.

Frames stream into the ffmpeg of imageio-ffmpeg (raw RGB on stdin, libx264 yuv420p, AAC audio
from a 16 kHz WAV cut to exactly the frames' duration). Everything goes to hidden temporary
files in the output folder; only a finished, fsynced MP4 is renamed into place, so an error or
a kill at any point leaves no partial output behind.
"""
from __future__ import annotations

import io
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from launcher.atomic import fsync_dir, write_bytes
from nerffacespeech.preprocess.audio import SAMPLE_RATE, fit_to_frames
from nerffacespeech.preprocess.video import ffmpeg


class Mp4Writer:
    """`with Mp4Writer(path, size, speech, n_frames) as w: w.write(frames)`; commits on a clean exit."""

    def __init__(self, path: Path, size: int, speech: np.ndarray, n_frames: int, fps: int = 25, crf: int = 18):
        self.path, self.size, self.fps, self.crf = Path(path), size, fps, crf
        self.speech = fit_to_frames(speech, n_frames, fps)
        self.frames_written = 0
        self._temps: list[Path] = []
        self._proc = None

    def _temp(self, suffix: str) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=suffix, dir=self.path.parent)
        os.close(fd)
        self._temps.append(Path(name))
        return Path(name)

    def __enter__(self) -> "Mp4Writer":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            wav, self._mp4, self._log = self._temp(".wav"), self._temp(".mp4"), self._temp(".log")
            soundfile.write(wav, self.speech, SAMPLE_RATE, subtype="PCM_16")
            self._stderr = open(self._log, "wb")
            self._proc = subprocess.Popen(
                [ffmpeg(), "-nostdin", "-v", "error", "-y",
                 "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.size}x{self.size}", "-r", str(self.fps),
                 "-i", "-", "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
                 "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf), "-preset", "medium",
                 "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", "-f", "mp4", str(self._mp4)],
                stdin=subprocess.PIPE, stderr=self._stderr)
        except BaseException:
            self._abort()
            raise
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append (B, H, W, 3) uint8 RGB frames."""
        assert frames.dtype == np.uint8 and frames.shape[1:] == (self.size, self.size, 3), frames.shape
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError:
            raise RuntimeError(f"ffmpeg stopped while encoding {self.path.name}: {self._error()}") from None
        self.frames_written += len(frames)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._proc.stdin.close()
            if self._proc.wait() != 0:
                raise RuntimeError(f"ffmpeg failed on {self.path.name}: {self._error()}")
            with open(self._mp4, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(self._mp4, 0o644)
            os.replace(self._mp4, self.path)
            self._temps.remove(self._mp4)
            fsync_dir(self.path.parent)
        except BaseException:
            self._abort()
            raise
        self._cleanup()

    def _error(self) -> str:
        self._stderr.flush()
        return (self._log.read_text(errors="replace").strip().splitlines() or ["no message"])[-1][:300]

    def _abort(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
        if self._proc is not None and self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        for temp in self._temps:
            temp.unlink(missing_ok=True)
        self._temps = []


def sheet_indices(n_frames: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over the clip, first and last included."""
    return sorted(set(np.linspace(0, n_frames - 1, min(count, n_frames)).round().astype(int).tolist()))


def write_contact_sheet(path: Path, frames: list[np.ndarray], columns: int = 4) -> None:
    """A grid of (H, W, 3) uint8 frames as one PNG, written atomically."""
    rows = -(-len(frames) // columns)
    h, w = frames[0].shape[:2]
    grid = np.zeros((rows * h, min(columns, len(frames)) * w, 3), np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = frame
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())

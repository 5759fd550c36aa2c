"""Find the clips of a raw dataset folder, in a fixed order.

    images/<person>/00001.jpg …          one clip per person; its speech: the one WAV in audio/<person>/
    images/<person>/<clip>/00001.jpg …   several clips per person; speech: audio/<person>/<clip>.wav
    videos/<person>/<clip>.mp4           frames at 25 fps and 16 kHz speech are extracted from it
    metadata/{poses,expressions,landmarks}.json   optional, written by preprocessing if absent

A frame file's name is its 1-based frame number, its place in time; preprocessing reads it
(`nerffacespeech.preprocess.timeline`), the listing here only collects the files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
AUDIO_SUFFIXES = (".wav",)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


@dataclass(frozen=True)
class Clip:
    """One continuous recording of one person: frames + speech, or a video."""

    person: str
    name: str
    frames: tuple[Path, ...] = ()
    audio: Path | None = None
    video: Path | None = None
    problem: str = ""            # a layout problem found while listing (reported, then skipped)

    @property
    def key(self) -> str:
        return f"{self.person}/{self.name}"

    @property
    def weight(self) -> int:
        """Work estimate for balancing shards: frames, or the video's size in 25-fps-frame units."""
        if self.video is not None:
            return max(1, self.video.stat().st_size // 20_000) if self.video.is_file() else 1
        return max(1, len(self.frames))


def _images(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))


def _speech(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def find_clips(root: Path) -> list[Clip]:
    """Every clip under `root`, sorted by key; layout problems are carried on the clip."""
    root = Path(root)
    clips: list[Clip] = []
    images = root / "images"
    for person in sorted(p for p in images.iterdir() if p.is_dir()) if images.is_dir() else []:
        flat = _images(person)
        nested = sorted(p for p in person.iterdir() if p.is_dir())
        speech = _speech(root / "audio" / person.name)
        if flat:
            problem = "" if len(speech) == 1 else \
                f"audio/{person.name}/ holds {len(speech)} WAV files; exactly one expected for flat frames"
            name = speech[0].stem if len(speech) == 1 else "00001"
            clips.append(Clip(person.name, name, flat, speech[0] if len(speech) == 1 else None,
                              problem=problem))
        for sub in nested:
            wav = root / "audio" / person.name / f"{sub.name}.wav"
            clips.append(Clip(person.name, sub.name, _images(sub), wav if wav.is_file() else None,
                              problem="" if wav.is_file() else f"audio/{person.name}/{sub.name}.wav is missing"))
    videos = root / "videos"
    for person in sorted(p for p in videos.iterdir() if p.is_dir()) if videos.is_dir() else []:
        for video in sorted(p for p in person.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
            clips.append(Clip(person.name, video.stem, video=video))
    keys = [c.key for c in clips]
    dupes = {k for k in keys if keys.count(k) > 1}
    return sorted((c if c.key not in dupes else Clip(c.person, c.name, c.frames, c.audio, c.video,
                                                      f"two clips are named {c.key}")
                   for c in clips), key=lambda c: (c.key, str(c.video or "")))

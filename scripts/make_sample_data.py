"""Regenerate the bundled sample dataset in data/sample/ from shipped sources.

Faces come from photos inside scikit-image, speech from Debian's espeak-ng. Every person says
each of its `sentences`, one clip each (images/<person>/<clip>/, audio/<person>/<clip>.wav).
Each talking clip is a still photo animated deterministically: the photo is treated as a card that
turns gently (yaw/pitch/roll, a homography) and the jaw opens with the loudness of the speech (a
local vertical warp below the mouth). Nothing here is filmed video; docs in data/sample/SOURCES.md.

    python scripts/make_sample_data.py               # speech from espeak-ng, then frames
    python scripts/make_sample_data.py --reuse-audio  # frames from the committed WAVs only
"""
from __future__ import annotations

import argparse
import io
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile
from PIL import Image
from scipy.signal import resample_poly
from skimage import data as skdata

FPS = 25
SAMPLE_RATE = 16_000
ESPEAK_RATE = 22_050
FRAME_SIZE = 256
JPEG_QUALITY = 80
GAN_FACE_SIZE = 64
GAN_FACE_COUNT = 100
ASTRONAUT_CROP = 320
LFW_SCALE = 160 / 25            # LFW crops are upscaled 25 → 160 px and padded to FRAME_SIZE


@dataclass(frozen=True)
class Speaker:
    """One identity: which photo, where its mouth is, and what it says (one sentence per clip)."""

    name: str
    sentences: tuple[str, ...]
    voice: str
    mouth_xy: tuple[float, float]   # in the still, measured once with the 68-point landmarker
    mouth_width: float
    chin_y: float
    motion_seed: int


SPEAKERS = (
    Speaker("astronaut", ("Hello. This talking head was made from one photo.",
                          "Please read the next line slowly and clearly.",
                          "My sister bought seven blue boxes of paper.",
                          "Nobody knew where the small dog had gone."),
            "en-us+f3", (161.0, 145.5), 44.0, 178.0, 1),
    Speaker("lfw_003", ("Each frame comes from a still picture.",
                        "We measured every number twice before writing it down.",
                        "Open the window when the morning is warm.",
                        "A quiet river runs past the old mill."),
            "en-us+m3", (121.0, 168.2), 46.0, 206.0, 2),
    Speaker("lfw_008", ("The sound and the frames have one length.",
                        "Bring me a cup of hot tea and a spoon.",
                        "The big ship moved away from the harbour at noon.",
                        "Five people waited by the door for an hour."),
            "en-gb+m1", (120.4, 161.5), 56.0, 198.0, 3),
)
MOTION_SEED_STRIDE = 10          # clip c of a speaker moves with seed motion_seed + 10·(c − 1)


def speak(text: str, voice: str) -> np.ndarray:
    """Speech from espeak-ng, resampled to 16 kHz mono float32 in [-1, 1]."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "175", "--stdout", text],
                         check=True, capture_output=True).stdout
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate == ESPEAK_RATE, rate
    return resample_poly(audio, 320, 441).astype(np.float32)     # 22050 · 320/441 = 16000


def still_for(name: str) -> np.ndarray:
    """The RGB photo a speaker is animated from, FRAME_SIZE-ish and with room around the face."""
    if name == "astronaut":
        return skdata.astronaut()[:ASTRONAUT_CROP, 62:62 + ASTRONAUT_CROP]   # head and shoulders
    index = int(name.split("_")[1])
    face = (skdata.lfw_subset()[index] * 255).round().astype(np.uint8)
    size = round(25 * LFW_SCALE)
    face = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    pad = (FRAME_SIZE - size) // 2
    rim = np.concatenate([face[0], face[-1], face[:, 0], face[:, -1]])
    face = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=int(np.median(rim)))
    return np.dstack([face] * 3)


def loudness(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Per-video-frame loudness in [0, 1], lightly smoothed: how far the jaw opens."""
    hop = SAMPLE_RATE // FPS
    padded = np.pad(audio, (0, max(0, n_frames * hop - len(audio))))
    rms = np.sqrt((padded[: n_frames * hop].reshape(n_frames, hop) ** 2).mean(axis=1))
    rms = np.convolve(rms, [0.25, 0.5, 0.25], mode="same")
    return np.clip(rms / (np.percentile(rms, 95) + 1e-8), 0.0, 1.0)


def head_angles(n_frames: int, seed: int) -> np.ndarray:
    """(n, 3) yaw, pitch, roll in degrees: slow sums of sinusoids, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / FPS
    amplitude = np.array([8.0, 4.0, 3.0])
    angles = []
    for amp in amplitude:
        freq = rng.uniform(0.15, 0.45, size=2)
        phase = rng.uniform(0, 2 * math.pi, size=2)
        angles.append(amp * (0.7 * np.sin(2 * math.pi * freq[0] * t + phase[0])
                             + 0.3 * np.sin(2 * math.pi * freq[1] * t + phase[1])))
    return np.stack(angles, axis=1)


def open_jaw(still: np.ndarray, speaker: Speaker, amount: float) -> np.ndarray:
    """Move the lower lip and chin down by up to a third of the mouth width (a local warp)."""
    h, w = still.shape[:2]
    mx, my = speaker.mouth_xy
    drop = amount * speaker.mouth_width / 3
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    across = np.exp(-((xs - mx) ** 2) / (2 * (0.75 * speaker.mouth_width) ** 2))
    below = np.clip((ys - my) / 3.0, 0, 1)                     # 0 above the lips, 1 just below
    fade = np.clip(1 - (ys - speaker.chin_y) / (0.6 * speaker.mouth_width), 0, 1)
    shift = drop * across * below * fade
    return cv2.remap(still, xs, ys - shift, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def card_homography(angles_deg: np.ndarray, center: tuple[float, float], src_size: int) -> np.ndarray:
    """Homography from the still to a FRAME_SIZE frame: the photo as a card turning about `center`."""
    yaw, pitch, roll = np.deg2rad(angles_deg)
    f = 2.0 * src_size                                        # a modest virtual focal length
    cx, cy = center
    ry = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    rot = rz @ rx @ ry
    k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    card_to_camera = np.array([[rot[0, 0], rot[0, 1], 0], [rot[1, 0], rot[1, 1], 0],
                               [rot[2, 0], rot[2, 1], f]])          # card at depth f, turned
    from_center = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]])
    scale = FRAME_SIZE / src_size
    recentre = np.array([[scale, 0, 0], [0, scale, 0], [0, 0, 1.0]])
    turn = k @ card_to_camera @ from_center
    return recentre @ turn


def face_center(speaker: Speaker) -> tuple[float, float]:
    """The point the card turns about: between the eyes and the mouth."""
    mx, my = speaker.mouth_xy
    return mx, my - 0.9 * speaker.mouth_width


def render_frames(speaker: Speaker, audio: np.ndarray, motion_seed: int) -> list[np.ndarray]:
    """All frames of one clip as RGB uint8 arrays (FRAME_SIZE × FRAME_SIZE)."""
    still = still_for(speaker.name)
    n_frames = round(len(audio) / SAMPLE_RATE * FPS)
    jaw = loudness(audio, n_frames)
    angles = head_angles(n_frames, motion_seed)
    frames = []
    for i in range(n_frames):
        moved = open_jaw(still, speaker, float(jaw[i]))
        hom = card_homography(angles[i], face_center(speaker), still.shape[0])
        frames.append(cv2.warpPerspective(moved, hom, (FRAME_SIZE, FRAME_SIZE),
                                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101))
    return frames


def gan_faces() -> list[np.ndarray]:
    """The 100 LFW face crops from scikit-image, upscaled bicubic to GAN_FACE_SIZE, gray → RGB."""
    faces = (skdata.lfw_subset()[:GAN_FACE_COUNT] * 255).round().astype(np.uint8)
    return [np.dstack([cv2.resize(f, (GAN_FACE_SIZE,) * 2, interpolation=cv2.INTER_CUBIC)] * 3)
            for f in faces]


def write_wav(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, SAMPLE_RATE, subtype="PCM_16")


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=JPEG_QUALITY)


def make(out: Path, reuse_audio: bool) -> None:
    """Write images/, audio/ and faces/ under `out` (SOURCES.md is kept by hand)."""
    for speaker in SPEAKERS:
        shutil.rmtree(out / "images" / speaker.name, ignore_errors=True)
        for c, sentence in enumerate(speaker.sentences, start=1):
            wav_path = out / "audio" / speaker.name / f"{c:05d}.wav"
            if reuse_audio:
                audio, rate = soundfile.read(wav_path, dtype="float32")
                assert rate == SAMPLE_RATE
            else:
                write_wav(wav_path, speak(sentence, speaker.voice))
                audio, _ = soundfile.read(wav_path, dtype="float32")   # frames follow the stored PCM
            motion_seed = speaker.motion_seed + MOTION_SEED_STRIDE * (c - 1)
            for i, frame in enumerate(render_frames(speaker, audio, motion_seed), start=1):
                write_jpeg(out / "images" / speaker.name / f"{c:05d}" / f"{i:05d}.jpg", frame)
    faces_dir = out / "faces" / "lfw"
    shutil.rmtree(faces_dir, ignore_errors=True)
    for i, face in enumerate(gan_faces(), start=1):
        faces_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(faces_dir / f"{i:05d}.png", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "sample")
    parser.add_argument("--reuse-audio", action="store_true",
                        help="read the committed WAVs instead of running espeak-ng")
    args = parser.parse_args()
    make(args.out, args.reuse_audio)


if __name__ == "__main__":
    main()

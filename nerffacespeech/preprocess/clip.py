"""One clip, start to finish: checks, landmarks, alignment, mel features, 3DMM fit, poses.

Frames sit on the time line their file numbers give (`timeline`): frame N is paired with the
speech of its own number, whatever is missing before it. Bad frames, and frame numbers without a
file, are dropped with their reason and their time slot kept; a bad clip raises BadInput and is
skipped as a whole.
"""
from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from nerffacespeech.configs.preprocess import PreprocessConfig
from nerffacespeech.data.layout import Clip
from nerffacespeech.data.processed import COEFF_SLICES

from . import align, audio, camera, images, landmarks, timeline, video
from .errors import BadInput

DETECT_CHUNK = 16


@dataclass
class ClipResult:
    crops: dict[int, bytes]                  # source frame number → encoded aligned crop
    arrays: dict[str, np.ndarray]
    frame_skips: list[dict] = field(default_factory=list)
    frames: int = 0


def process_clip(clip: Clip, cfg: PreprocessConfig, marker, fitter=None, scratch: Path | None = None
                 ) -> ClipResult:
    """Everything training needs from one clip; BadInput if the clip cannot be used."""
    if clip.problem:
        raise BadInput("layout", clip.problem)
    if clip.video is not None:
        with tempfile.TemporaryDirectory(dir=scratch, prefix=".video-") as tmp:
            paths, wav = video.extract(clip.video, Path(tmp), cfg.fps)
            return _process(clip.key, paths, wav, cfg, marker, fitter)
    if not clip.frames:
        raise BadInput("no_frames", f"{clip.key} has no image files")
    return _process(clip.key, clip.frames, clip.audio, cfg, marker, fitter)


def _process(key: str, paths, wav: Path, cfg: PreprocessConfig, marker, fitter) -> ClipResult:
    frames = timeline.number_frames(key, paths, cfg.max_frame_gap)
    n_frames = frames.length
    speech = audio.load_speech(wav, cfg.audio_sample_rates, cfg.silence_dbfs)
    audio_frames = len(speech) * cfg.fps / audio.SAMPLE_RATE
    if abs(audio_frames - n_frames) > cfg.max_av_mismatch_frames:
        raise BadInput("av_mismatch", f"{n_frames} frames but {audio_frames:.1f} frames of audio "
                                      f"(tolerance {cfg.max_av_mismatch_frames})")
    kept, raw_landmarks, skips = _detect_all(frames, cfg, marker)
    skips = sorted(skips + _missing(frames), key=lambda s: s["frame"])
    if len(skips) > cfg.max_bad_frame_fraction * n_frames or not kept:
        raise BadInput("too_many_bad_frames", f"{len(skips)} of {n_frames} frames unusable "
                                              f"(allowed fraction {cfg.max_bad_frame_fraction})")
    smoothed = align.smooth_landmarks(np.stack(raw_landmarks), cfg.smooth_sigma_frames)
    crops, transforms, fit_crops = _align_all(frames, kept, smoothed, cfg)
    aligned_landmarks = align.apply_transforms(np.stack(raw_landmarks).astype(np.float64), transforms)
    mel = audio.log_mel(audio.fit_to_frames(speech, n_frames, cfg.fps))
    frame_index = np.array(kept, np.int32)
    arrays = {
        "frame_index": frame_index,
        "n_frames": np.array(n_frames, np.int32),
        "mel": mel,
        "mel_starts": audio.window_starts(n_frames, cfg.fps)[frame_index - 1].astype(np.int32),
        "landmarks": np.stack(raw_landmarks).astype(np.float32),
        "landmarks_smoothed": smoothed.astype(np.float32),
        "landmarks_aligned": aligned_landmarks.astype(np.float32),
        "transforms": transforms.astype(np.float32),
    }
    if fitter is not None:
        scale = cfg.fit3dmm.fit_size / cfg.resolution
        fit = fitter.fit(fit_crops, aligned_landmarks * scale)
        arrays.update(coeffs=fit.coeffs.astype(np.float32),
                      fit_landmark_error=fit.landmark_error.astype(np.float32))
        pose = camera.stylenerf_pose(fit.coeffs[:, COEFF_SLICES["angles"]], fit.coeffs[:, COEFF_SLICES["trans"]])
        arrays.update(poses=pose.angles.astype(np.float32), cam2world=pose.cam2world.astype(np.float32))
    return ClipResult(crops, arrays, skips, n_frames)


def _missing(frames: timeline.Frames) -> list[dict]:
    """A dropped-frame record for each frame number without a file (a gap short enough to keep)."""
    return [{"frame": n, "kind": "frame_missing", "detail": f"no file for frame {n}; its time slot is kept"}
            for n in frames.missing]


def _detect_all(frames: timeline.Frames, cfg: PreprocessConfig, marker):
    """Frame checks and one face per frame, in chunks; returns kept frame numbers, landmarks, skips."""
    kept, found, skips = [], [], []
    numbers = frames.numbers
    for start in range(0, len(numbers), DETECT_CHUNK):
        chunk, loaded = [], []
        for n in numbers[start:start + DETECT_CHUNK]:
            try:
                loaded.append(images.load_frame(frames.files[n], cfg.min_side))
                chunk.append(n)
            except BadInput as bad:
                skips.append({"frame": n, "kind": bad.kind, "detail": bad.detail})
        for n, faces in zip(chunk, marker.detect(loaded)):
            try:
                face = landmarks.single_face(faces, marker.min_score)
            except BadInput as bad:
                skips.append({"frame": n, "kind": bad.kind, "detail": bad.detail})
                continue
            kept.append(n)
            found.append(face.landmarks)
    return kept, found, skips


def _align_all(frames: timeline.Frames, kept: list[int], smoothed: np.ndarray, cfg: PreprocessConfig):
    """Aligned crops (encoded, keyed by frame number), their transforms, and the crops at the
    fitting size; frames are read again rather than held, so long clips fit in memory."""
    crops, transforms, fit_crops = {}, [], []
    for start in range(0, len(kept), DETECT_CHUNK):
        batch = kept[start:start + DETECT_CHUNK]
        pixels = [images.load_frame(frames.files[n], 1) for n in batch]
        aligned, tf = align.align_faces(pixels, smoothed[start:start + len(batch)], cfg.resolution)
        transforms.append(tf)
        for n, crop in zip(batch, aligned):
            crops[n] = _encode(crop, cfg)
            fit_crops.append(cv2.resize(crop, (cfg.fit3dmm.fit_size,) * 2, interpolation=cv2.INTER_AREA))
    return crops, np.concatenate(transforms), np.stack(fit_crops)


def _encode(crop: np.ndarray, cfg: PreprocessConfig) -> bytes:
    buffer = io.BytesIO()
    if cfg.image_format == "png":
        Image.fromarray(crop).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(crop).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()

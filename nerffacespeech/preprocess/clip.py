"""One clip, start to finish: checks, landmarks, alignment, mel features, 3DMM fit, poses.

Bad frames are dropped with their reason (the clip keeps its frame numbering, so the mel
windows still line up); a bad clip raises BadInput and is skipped as a whole.
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

from . import align, audio, camera, images, landmarks, video
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
            frames, wav = video.extract(clip.video, Path(tmp), cfg.fps)
            return _process(frames, wav, cfg, marker, fitter)
    if not clip.frames:
        raise BadInput("no_frames", f"{clip.key} has no image files")
    return _process(list(clip.frames), clip.audio, cfg, marker, fitter)


def _process(frame_paths: list[Path], wav: Path, cfg: PreprocessConfig, marker, fitter) -> ClipResult:
    n_frames = len(frame_paths)
    speech = audio.load_speech(wav, cfg.audio_sample_rates, cfg.silence_dbfs)
    audio_frames = len(speech) * cfg.fps / audio.SAMPLE_RATE
    if abs(audio_frames - n_frames) > cfg.max_av_mismatch_frames:
        raise BadInput("av_mismatch", f"{n_frames} frames but {audio_frames:.1f} frames of audio "
                                      f"(tolerance {cfg.max_av_mismatch_frames})")
    kept, raw_landmarks, skips = _detect_all(frame_paths, cfg, marker)
    if len(skips) > cfg.max_bad_frame_fraction * n_frames or not kept:
        raise BadInput("too_many_bad_frames", f"{len(skips)} of {n_frames} frames unusable "
                                              f"(allowed fraction {cfg.max_bad_frame_fraction})")
    smoothed = align.smooth_landmarks(np.stack(raw_landmarks), cfg.smooth_sigma_frames)
    crops, transforms, fit_crops = _align_all(frame_paths, kept, smoothed, cfg)
    aligned_landmarks = align.apply_transforms(np.stack(raw_landmarks).astype(np.float64), transforms)
    mel = audio.log_mel(audio.fit_to_frames(speech, n_frames, cfg.fps))
    arrays = {
        "frame_index": np.array([i + 1 for i in kept], np.int32),
        "n_frames": np.array(n_frames, np.int32),
        "mel": mel,
        "mel_starts": audio.window_starts(n_frames, cfg.fps)[kept].astype(np.int32),
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
        pose = camera.stylenerf_pose(fit.coeffs[:, 224:227], fit.coeffs[:, 254:257])
        arrays.update(poses=pose.angles.astype(np.float32), cam2world=pose.cam2world.astype(np.float32))
    return ClipResult(crops, arrays, skips, n_frames)


def _detect_all(paths: list[Path], cfg: PreprocessConfig, marker):
    """Frame checks and one face per frame, in chunks; returns kept indices, landmarks, skips."""
    kept, found, skips = [], [], []
    for start in range(0, len(paths), DETECT_CHUNK):
        chunk, loaded = [], []
        for i in range(start, min(start + DETECT_CHUNK, len(paths))):
            try:
                loaded.append(images.load_frame(paths[i], cfg.min_side))
                chunk.append(i)
            except BadInput as bad:
                skips.append({"frame": i + 1, "kind": bad.kind, "detail": bad.detail})
        for i, faces in zip(chunk, marker.detect(loaded)):
            try:
                face = landmarks.single_face(faces, marker.min_score)
            except BadInput as bad:
                skips.append({"frame": i + 1, "kind": bad.kind, "detail": bad.detail})
                continue
            kept.append(i)
            found.append(face.landmarks)
    return kept, found, sorted(skips, key=lambda s: s["frame"])


def _align_all(paths: list[Path], kept: list[int], smoothed: np.ndarray, cfg: PreprocessConfig):
    """Aligned crops (encoded, keyed by 1-based frame number), their transforms, and the crops
    at the fitting size; frames are read again rather than held, so long clips fit in memory."""
    crops, transforms, fit_crops = {}, [], []
    for start in range(0, len(kept), DETECT_CHUNK):
        batch = kept[start:start + DETECT_CHUNK]
        pixels = [images.load_frame(paths[i], 1) for i in batch]
        aligned, tf = align.align_faces(pixels, smoothed[start:start + len(batch)], cfg.resolution)
        transforms.append(tf)
        for i, crop in zip(batch, aligned):
            crops[i + 1] = _encode(crop, cfg)
            fit_crops.append(cv2.resize(crop, (cfg.fit3dmm.fit_size,) * 2, interpolation=cv2.INTER_AREA))
    return crops, np.concatenate(transforms), np.stack(fit_crops)


def _encode(crop: np.ndarray, cfg: PreprocessConfig) -> bytes:
    buffer = io.BytesIO()
    if cfg.image_format == "png":
        Image.fromarray(crop).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(crop).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()

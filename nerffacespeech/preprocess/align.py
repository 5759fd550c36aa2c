"""FFHQ-style face alignment from 68-point landmarks, and temporal smoothing for video.

The crop is the one of the FFHQ dataset script (NVlabs/ffhq-dataset, `recreate_aligned_images`):
an oriented square centred a tenth of the eye-to-mouth vector below the eye midpoint, sized
max(4·|eye-to-eye|, 3.6·|eye-to-mouth|), turned so the eyes are level. Outside the photo we
reflect (FFHQ also blurs the reflected border; we do not, which changes nothing inside the photo).
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d


def ffhq_quads(landmarks: np.ndarray) -> np.ndarray:
    """(N, 4, 2) crop corners (top-left, bottom-left, bottom-right, top-right) for (N, 68, 2)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left = lm[:, 36:42].mean(axis=1)
    eye_right = lm[:, 42:48].mean(axis=1)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[:, 48] + lm[:, 54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - eye_to_mouth[:, ::-1] * np.array([-1.0, 1.0])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    half = np.maximum(np.linalg.norm(eye_to_eye, axis=1) * 2.0, np.linalg.norm(eye_to_mouth, axis=1) * 1.8)
    x *= half[:, None]
    y = x[:, ::-1] * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y], axis=1)


def quad_transforms(quads: np.ndarray, resolution: int) -> np.ndarray:
    """(N, 2, 3) affine maps from photo pixels to aligned pixels for each crop."""
    out = np.empty((len(quads), 2, 3))
    dst = np.array([[0, 0], [0, resolution], [resolution, 0]], dtype=np.float32)
    for i, q in enumerate(quads):
        out[i] = cv2.getAffineTransform(q[[0, 1, 3]].astype(np.float32), dst)
    return out


def align_faces(images: list[np.ndarray], landmarks: np.ndarray, resolution: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (N, R, R, 3) uint8 crops and their (N, 2, 3) photo → crop transforms."""
    quads = ffhq_quads(landmarks)
    transforms = quad_transforms(quads, resolution)
    crops = np.empty((len(images), resolution, resolution, 3), np.uint8)
    for i, (image, quad) in enumerate(zip(images, quads)):
        shrink = int(np.floor(np.linalg.norm(quad[3] - quad[0]) / resolution / 2))
        source, transform = image, transforms[i]
        if shrink > 1:       # downscale in one antialiased step first, as FFHQ does
            size = (round(image.shape[1] / shrink), round(image.shape[0] / shrink))
            source = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            scale = np.diag([image.shape[1] / size[0], image.shape[0] / size[1], 1.0])
            transform = transform @ scale
        crops[i] = cv2.warpAffine(source, transform, (resolution, resolution),
                                  flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return crops, transforms


def apply_transforms(points: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Map (N, K, 2) photo points through (N, 2, 3) affine transforms."""
    return np.einsum("nij,nkj->nki", transforms[:, :, :2], points) + transforms[:, None, :, 2]


def smooth_landmarks(landmarks: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Gaussian smoothing over time of (T, 68, 2) landmarks so video crops do not jitter."""
    if sigma_frames <= 0 or len(landmarks) < 2:
        return np.asarray(landmarks, dtype=np.float32)
    return gaussian_filter1d(np.asarray(landmarks, np.float64), sigma_frames, axis=0,
                             mode="nearest").astype(np.float32)

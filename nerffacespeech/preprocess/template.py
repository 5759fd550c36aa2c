"""A small built-in face model in the BFM09_model_info layout, for when the real BFM is absent.

Its mean shape is a generic head: the 68 landmarks sit where they fall on average in FFHQ-aligned
faces (measured with the dlib landmarker on the 100 LFW faces of scikit-image and the astronaut,
89 found, made left-right symmetric), lifted onto an ellipsoid with a nose; a grid over the face
oval completes the mesh. With `bases="zero"` it only supports pose (and lighting) fitting: the
fallback that gives the demo camera poses. With `bases="random"` its bases are smooth random
fields with decaying strength: the synthetic morphable model the fitting tests recover.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import Delaunay

from .bfm import CAMERA_DISTANCE, FOCAL_AT_224

FRONTAL_68 = np.array([
    [0.217, 0.485], [0.22, 0.56], [0.227, 0.634], [0.241, 0.708], [0.268, 0.777], [0.311, 0.838],
    [0.365, 0.889], [0.427, 0.93], [0.5, 0.943], [0.573, 0.93], [0.635, 0.889], [0.689, 0.838],
    [0.732, 0.777], [0.759, 0.708], [0.773, 0.634], [0.78, 0.56], [0.783, 0.485], [0.276, 0.429],
    [0.309, 0.397], [0.357, 0.385], [0.407, 0.39], [0.454, 0.408], [0.546, 0.408], [0.593, 0.39],
    [0.643, 0.385], [0.691, 0.397], [0.724, 0.429], [0.5, 0.464], [0.5, 0.51], [0.5, 0.556],
    [0.5, 0.604], [0.445, 0.64], [0.471, 0.65], [0.5, 0.658], [0.529, 0.65], [0.555, 0.64],
    [0.332, 0.475], [0.362, 0.459], [0.397, 0.458], [0.427, 0.479], [0.395, 0.486], [0.36, 0.486],
    [0.573, 0.479], [0.603, 0.458], [0.638, 0.459], [0.668, 0.475], [0.64, 0.486], [0.605, 0.486],
    [0.39, 0.735], [0.429, 0.712], [0.47, 0.703], [0.5, 0.709], [0.53, 0.703], [0.571, 0.712],
    [0.61, 0.735], [0.572, 0.776], [0.532, 0.793], [0.5, 0.797], [0.468, 0.793], [0.428, 0.776],
    [0.407, 0.737], [0.47, 0.727], [0.5, 0.73], [0.53, 0.727], [0.593, 0.737], [0.531, 0.758],
    [0.5, 0.762], [0.469, 0.758]])
UNITS_PER_CROP = 224 * CAMERA_DISTANCE / FOCAL_AT_224      # a 224 px crop at the model's distance


def _lift(xy: np.ndarray) -> np.ndarray:
    """Depth for face-plane points: an ellipsoid front with a nose ridge and tip."""
    half_width = 0.3 * UNITS_PER_CROP
    x, y = xy[:, 0], xy[:, 1]
    y0 = (0.5 - 0.6) * UNITS_PER_CROP
    r2 = (x / (1.1 * half_width)) ** 2 + ((y - y0) / (1.5 * half_width)) ** 2
    z = 0.9 * half_width * np.sqrt(np.clip(1 - r2, 0.05, None))
    nose_x, nose_y = 0.0, (0.5 - 0.604) * UNITS_PER_CROP
    ridge = np.exp(-(x / (0.05 * UNITS_PER_CROP)) ** 2) * np.clip(1 - np.abs(y - (nose_y + 0.06)) / 0.45, 0, 1)
    tip = np.exp(-((x - nose_x) ** 2 + (y - nose_y) ** 2) / (2 * (0.05 * UNITS_PER_CROP) ** 2))
    return z + 0.12 * half_width * ridge + 0.25 * half_width * tip


def _plane(uv: np.ndarray) -> np.ndarray:
    return np.stack([(uv[:, 0] - 0.5) * UNITS_PER_CROP, (0.5 - uv[:, 1]) * UNITS_PER_CROP], -1)


def _smooth_fields(points: np.ndarray, count: int, strength: np.ndarray, rng, centre_weight=None) -> np.ndarray:
    """(3N, count) displacement fields: a few Gaussian bumps with random 3D directions each."""
    n = len(points)
    out = np.zeros((n, 3, count))
    span = np.ptp(points[:, :2], axis=0).max()
    for k in range(count):
        for _ in range(3):
            centre = points[rng.integers(n), :2] if centre_weight is None else \
                points[rng.choice(n, p=centre_weight), :2]
            width = span * rng.uniform(0.12, 0.35)
            bump = np.exp(-((points[:, :2] - centre) ** 2).sum(1) / (2 * width ** 2))
            out[:, :, k] += bump[:, None] * rng.normal(size=3)[None, :]
        out[:, :, k] *= strength[k] / (np.sqrt((out[:, :, k] ** 2).mean()) + 1e-12)
    return out.reshape(3 * n, count)


def build(bases: str = "zero", grid: int = 20, seed: int = 0) -> dict:
    """Arrays in the BFM09_model_info layout (1-based indices), ready for `bfm.save_mat`."""
    g = np.linspace(0.15, 0.85, grid)
    uu, vv = np.meshgrid(g, np.linspace(0.22, 0.98, grid))
    oval = ((uu - 0.5) / 0.33) ** 2 + ((vv - 0.58) / 0.42) ** 2 <= 1.0
    extra = np.stack([uu[oval], vv[oval]], -1)
    far = np.min(np.linalg.norm(extra[:, None] - FRONTAL_68[None], axis=-1), axis=1) > 0.02
    uv = np.concatenate([FRONTAL_68, extra[far]])
    xy = _plane(uv)
    vertices = np.concatenate([xy, _lift(xy)[:, None]], 1)
    triangles = Delaunay(xy).simplices
    keep = np.ptp(uv[triangles], axis=1).max(1) < 0.2                       # drop sliver hull faces
    triangles = triangles[keep]
    triangles = np.where(_facing(vertices, triangles)[:, None], triangles, triangles[:, ::-1])
    n = len(vertices)
    point_buf = np.full((n, 8), len(triangles) + 1, np.int64)
    fill = np.zeros(n, int)
    for f, tri in enumerate(triangles):
        for v in tri:
            if fill[v] < 8:
                point_buf[v, fill[v]] = f + 1
                fill[v] += 1
    rng = np.random.default_rng(seed)
    if bases == "random":
        near_mouth = np.exp(-((uv - [0.5, 0.75]) ** 2).sum(1) / 0.02) + 0.05
        id_base = _smooth_fields(vertices, 80, 0.04 * np.exp(-np.arange(80) / 8), rng)
        exp_base = _smooth_fields(vertices, 64, 0.03 * np.exp(-np.arange(64) / 6), rng,
                                  near_mouth / near_mouth.sum())
        tex_base = _smooth_fields(vertices, 80, 20 * np.exp(-np.arange(80) / 8), rng)
    else:
        id_base, exp_base, tex_base = np.zeros((3 * n, 80)), np.zeros((3 * n, 64)), np.zeros((3 * n, 80))
    skin = np.array([180.0, 140.0, 120.0])
    meantex = np.tile(skin, (n, 1)) * (0.85 + 0.15 * np.cos(6 * uv[:, :1]))
    return {
        "meanshape": vertices.reshape(1, -1), "meantex": meantex.reshape(1, -1),
        "idBase": id_base, "exBase": exp_base, "texBase": tex_base,
        "tri": triangles + 1, "point_buf": point_buf, "keypoints": np.arange(1, 69)[None],
        "skinmask": np.ones((1, n)),
    }


def _facing(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Whether each triangle's normal (Deep3DFaceRecon's (a−b)×(b−c)) points toward +z."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return np.cross(a - b, b - c)[:, 2] > 0

"""Load BFM09_model_info.mat (the Basel Face Model 2009 as 3DMM-Fitting-Pytorch converts it).

The file holds, for the 35,709-vertex front face: `meanshape`/`meantex` (1 x 3V), `idBase`
(3V x 80), `exBase` (3V x 64), `texBase` (3V x 80), `tri` (T x 3, 1-based vertex indices),
`point_buf` (V x 8, 1-based indices of the triangles around each vertex), `keypoints`
(1 x 68, 1-based vertex indices of the 68 landmarks), and `skinmask`, `tri_mask2`,
`frontmask2_idx`. Saved by scipy (MATLAB v5); a v7.3 (HDF5) copy is read with h5py if installed.
Torch-free: arrays come back as numpy, indices 0-based.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import formats

VERTICES = 35709
LANDMARKS = 68
BASES = {"idBase": 80, "exBase": 64, "texBase": 80}
REQUIRED = ("meanshape", "meantex", "idBase", "exBase", "texBase", "tri", "point_buf", "keypoints")


class BFMError(ValueError):
    """The file is not a usable BFM09_model_info.mat; the message names the key."""


@dataclass(frozen=True)
class BFM09:
    mean_shape: np.ndarray    # (3V,) float32, x0 y0 z0 x1 ...
    mean_tex: np.ndarray      # (3V,) float32, 0..255
    id_base: np.ndarray       # (3V, 80) float32
    exp_base: np.ndarray      # (3V, 64) float32
    tex_base: np.ndarray      # (3V, 80) float32
    triangles: np.ndarray     # (T, 3) int64, 0-based vertex indices
    point_buf: np.ndarray     # (V, 8) int64, 0-based triangle indices
    keypoints: np.ndarray     # (68,) int64, 0-based vertex indices
    skin_mask: np.ndarray | None  # (V,) float32 where present

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0] // 3


def load_bfm09(path: str | Path, vertices: int | None = VERTICES) -> BFM09:
    """Read and check the file; `vertices=None` accepts any consistent vertex count."""
    path = Path(path)
    raw = _read_mat(path)
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise BFMError(f"{path}: missing key(s) {missing}; a BFM09_model_info.mat has {list(REQUIRED)} "
                       f"(found {sorted(k for k in raw if not k.startswith('__'))})")
    mean_shape = _vector(path, raw, "meanshape")
    v = mean_shape.size // 3
    if mean_shape.size % 3 or (vertices is not None and v != vertices):
        raise BFMError(f"{path}: meanshape has {mean_shape.size} values, expected 3 x {vertices or 'V'}")
    mean_tex = _vector(path, raw, "meantex")
    _expect(path, "meantex", mean_tex.shape, (3 * v,))
    bases = {}
    for key, width in BASES.items():
        bases[key] = np.asarray(raw[key], np.float32)
        _expect(path, key, bases[key].shape, (3 * v, width))
    triangles = _indices(path, raw, "tri", v)
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise BFMError(f"{path}: tri has shape {triangles.shape}, expected (T, 3)")
    point_buf = np.asarray(raw["point_buf"], np.int64) - 1
    _expect(path, "point_buf", point_buf.shape, (v, 8))
    if point_buf.min() < -1 or point_buf.max() >= len(triangles):
        raise BFMError(f"{path}: point_buf refers to triangles outside 1..{len(triangles)}")
    keypoints = _indices(path, raw, "keypoints", v).reshape(-1)
    _expect(path, "keypoints", keypoints.shape, (LANDMARKS,))
    skin = raw.get("skinmask")
    skin_mask = None if skin is None else np.asarray(skin, np.float32).reshape(-1)
    if skin_mask is not None:
        _expect(path, "skinmask", skin_mask.shape, (v,))
    return BFM09(mean_shape, mean_tex, bases["idBase"], bases["exBase"], bases["texBase"],
                 triangles, point_buf, keypoints, skin_mask)


def _read_mat(path: Path) -> dict:
    import scipy.io

    if not path.is_file():
        raise BFMError(f"{path}: not found; see docs/PRETRAINED.md (bfm09_model_info)")
    bad = formats.problem(path, "mat")
    if bad:
        raise BFMError(f"{path}: {bad}")
    try:
        return scipy.io.loadmat(path)
    except NotImplementedError:       # scipy's answer to MATLAB v7.3 files
        return _read_hdf5_mat(path)
    except (ValueError, IndexError, TypeError) as exc:
        raise BFMError(f"{path}: not a readable .mat file ({exc!r})") from None


def _read_hdf5_mat(path: Path) -> dict:
    try:
        import h5py
    except ImportError:
        raise BFMError(f"{path} is a MATLAB v7.3 (HDF5) file: `pip install h5py` to read it, or re-save it "
                       "with `save -v7` in MATLAB/Octave") from None
    with h5py.File(path, "r") as f:        # MATLAB stores column-major: transpose back
        return {key: np.asarray(f[key]).T for key in f.keys() if isinstance(f[key], h5py.Dataset)}


def _vector(path: Path, raw: dict, key: str) -> np.ndarray:
    array = np.asarray(raw[key], np.float32)
    if array.ndim == 2 and 1 not in array.shape:
        raise BFMError(f"{path}: {key} has shape {array.shape}, expected a 1 x 3V or 3V x 1 vector")
    return array.reshape(-1)


def _indices(path: Path, raw: dict, key: str, v: int) -> np.ndarray:
    array = np.asarray(raw[key], np.int64)
    if array.size and (array.min() < 1 or array.max() > v):
        raise BFMError(f"{path}: {key} holds vertex indices outside 1..{v} (MATLAB's 1-based)")
    return array - 1


def _expect(path: Path, key: str, shape: tuple, expected: tuple) -> None:
    if tuple(shape) != tuple(expected):
        raise BFMError(f"{path}: {key} has shape {tuple(shape)}, expected {tuple(expected)}")

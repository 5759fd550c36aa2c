"""The BFM09 morphable model in the layout of `BFM09_model_info.mat` (Deep3DFaceRecon, SadTalker).

Keys used (1-based indices in the file, 0-based here): meanshape (1, 3N), meantex (1, 3N),
idBase (3N, 80), exBase (3N, 64), texBase (3N, 80), tri (F, 3), point_buf (N, 8),
keypoints (1, 68), skinmask (1, N). The real file has N = 35,709 vertices; tests write small
synthetic models in the same layout with `save_mat`.

Coefficients follow Deep3DFaceRecon: 257 per frame = id 80 | exp 64 | tex 80 | angles 3 |
SH gamma 27 | translation 3, with the camera 10 units from the origin, focal 1015 at 224 px.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerffacespeech.data.processed import COEFF_SLICES   # the layout the processed data store

SHAPES = {"idBase": 80, "exBase": 64, "texBase": 80}
REQUIRED = ("meanshape", "meantex", "idBase", "exBase", "texBase", "tri", "point_buf", "keypoints")
CAMERA_DISTANCE = 10.0
FOCAL_AT_224 = 1015.0


@dataclass(frozen=True)
class MorphableModel:
    mean_shape: torch.Tensor     # (N, 3), centred on its mean
    id_base: torch.Tensor        # (3N, 80)
    exp_base: torch.Tensor       # (3N, 64)
    mean_tex: torch.Tensor       # (N, 3) in [0, 1]
    tex_base: torch.Tensor       # (3N, 80) scaled to [0, 1] units
    triangles: torch.Tensor      # (F, 3) int64, 0-based
    point_buf: torch.Tensor      # (N, 8) int64, 0-based triangle ids around each vertex
    keypoints: torch.Tensor      # (68,) int64, 0-based vertex ids of the 68 landmarks
    skin_mask: torch.Tensor      # (N,) float, 1 on skin

    @property
    def n_vertices(self) -> int:
        return self.mean_shape.shape[0]

    def to(self, device) -> "MorphableModel":
        return MorphableModel(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})


def layout_problems(mat: dict) -> list[str]:
    """What keeps a loaded .mat dict from being a BFM09_model_info layout (empty when fine)."""
    missing = [k for k in REQUIRED if k not in mat]
    if missing:
        return [f"missing keys: {', '.join(missing)}"]
    problems = []
    n3 = np.asarray(mat["meanshape"]).size
    if n3 % 3:
        problems.append(f"meanshape has {n3} values, not a multiple of 3")
    for key, cols in SHAPES.items():
        shape = np.shape(mat[key])
        if shape != (n3, cols):
            problems.append(f"{key} has shape {shape}, expected ({n3}, {cols})")
    if np.asarray(mat["meantex"]).size != n3:
        problems.append("meantex does not match meanshape in size")
    if np.asarray(mat["keypoints"]).size != 68:
        problems.append(f"keypoints has {np.asarray(mat['keypoints']).size} entries, expected 68")
    if np.shape(mat["tri"])[-1:] != (3,):
        problems.append(f"tri has shape {np.shape(mat['tri'])}, expected (F, 3)")
    return problems


def load_mat(path: Path) -> dict:
    """The arrays of a v5 .mat file (v7.3/HDF5 files need h5py and are refused with a hint)."""
    from scipy.io import loadmat

    try:
        return loadmat(str(path))
    except NotImplementedError as exc:
        raise ValueError(f"{path} is a MATLAB v7.3 file; re-save it as v5 (scipy cannot read v7.3)") from exc


def load_bfm(path: Path, device: str | torch.device = "cpu") -> MorphableModel:
    """Read and check a BFM09_model_info-layout file into tensors (0-based, centred, [0, 1] texture)."""
    mat = load_mat(Path(path))
    problems = layout_problems(mat)
    if problems:
        raise ValueError(f"{path}: not a BFM09_model_info layout: {'; '.join(problems)}")
    return from_arrays(mat, device)


def from_arrays(mat: dict, device: str | torch.device = "cpu") -> MorphableModel:
    mean_shape = np.asarray(mat["meanshape"], np.float64).reshape(-1, 3)
    mean_shape = mean_shape - mean_shape.mean(axis=0, keepdims=True)
    n = mean_shape.shape[0]
    skin = np.asarray(mat["skinmask"], np.float32).reshape(-1) if "skinmask" in mat else np.ones(n, np.float32)
    t = lambda a, dt=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=device)
    return MorphableModel(
        mean_shape=t(mean_shape), id_base=t(mat["idBase"]), exp_base=t(mat["exBase"]),
        mean_tex=t(np.asarray(mat["meantex"], np.float64).reshape(-1, 3) / 255.0),
        tex_base=t(np.asarray(mat["texBase"], np.float64) / 255.0),
        triangles=t(np.asarray(mat["tri"], np.int64) - 1, torch.int64),
        point_buf=t(np.asarray(mat["point_buf"], np.int64) - 1, torch.int64),
        keypoints=t(np.asarray(mat["keypoints"], np.int64).reshape(-1) - 1, torch.int64),
        skin_mask=t(skin))


def save_mat(path: Path, arrays: dict) -> None:
    """Write arrays in the BFM09_model_info layout (1-based indices are the caller's to give)."""
    from scipy.io import savemat

    savemat(str(path), arrays, do_compression=True)


def split(coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Name the parts of (B, 257) coefficients."""
    return {name: coeffs[:, s] for name, s in COEFF_SLICES.items()}

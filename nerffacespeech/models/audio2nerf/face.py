"""The 3DMM the processed data were fitted with, as the audio path needs it: expression basis,
mean shape, mouth landmarks, and the map from model space into the generator's world.

Which model: the `face_model` each clip's outcome records (`bfm09`: the BFM09_model_info file;
`synthetic`: the built-in small model with expression bases). The pose-only `template` has no
expression basis (every fitted expression is zero), so it is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nerffacespeech.preprocess import bfm

MOUTH = slice(48, 68)              # iBUG 68: outer and inner lips
INNER_UPPER, INNER_LOWER = 62, 66  # inner-lip midpoints: mouth opening
PX_PER_UNIT = bfm.FOCAL_AT_224 / bfm.CAMERA_DISTANCE   # model units at the face -> px of a 224 crop
# BFM (x right, y up, z to the camera) -> generator world (face looks along +x, z up), scaled so
# the camera distance 10 becomes the generator's camera radius 1 (both FOV ~12 degrees).
_TO_WORLD = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) / bfm.CAMERA_DISTANCE


@dataclass(frozen=True)
class FaceBasis:
    mean_shape: torch.Tensor     # (N, 3) model units
    exp_basis: torch.Tensor      # (N, 3, 64) model units per coefficient
    keypoints: torch.Tensor      # (68,) vertex ids
    name: str

    def to(self, device) -> "FaceBasis":
        return FaceBasis(self.mean_shape.to(device), self.exp_basis.to(device), self.keypoints.to(device), self.name)

    def landmarks(self, exp: torch.Tensor, ids: slice = MOUTH) -> torch.Tensor:
        """(..., K, 3) landmark positions (mean identity) for expressions (..., 64)."""
        vid = self.keypoints[ids]
        return self.mean_shape[vid] + torch.einsum("kcd,...d->...kc", self.exp_basis[vid], exp.float())

    def mouth_opening(self, exp: torch.Tensor) -> torch.Tensor:
        """(...) inner-lip gap in px at 224 for expressions (..., 64)."""
        points = self.landmarks(exp, slice(INNER_UPPER, INNER_LOWER + 1, INNER_LOWER - INNER_UPPER))
        return (points[..., 0, :] - points[..., 1, :]).norm(dim=-1) * PX_PER_UNIT

    def world(self, points: torch.Tensor) -> torch.Tensor:
        """Model-space points (..., 3) in the generator's world."""
        return points @ _TO_WORLD.to(points).T


def load_face_basis(name: str, pretrained_root: Path | None = None) -> FaceBasis:
    """The morphable model called `name` in the processed data's outcomes."""
    from nerffacespeech.preprocess import template

    if name == "synthetic":
        model = bfm.from_arrays(template.build("random"))
    elif name == "bfm09":
        path = Path(pretrained_root or "pretrained_networks") / "BFM09_model_info.mat"
        model = bfm.load_bfm(path)
    else:
        raise ValueError(f"the processed data were fitted with face model {name!r}, which has no expression "
                         "basis; preprocess with a BFM09 file or fit3dmm.bfm_path: synthetic")
    n = model.n_vertices
    return FaceBasis(model.mean_shape, model.exp_base.reshape(n, 3, -1), model.keypoints, name)


def lip_distance(face: FaceBasis, exp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(...) mean distance in px at 224 between the 20 mouth landmarks of the mesh posed with `exp`
    and with `target` (..., 64). Identity and rigid pose cancel: the model is linear in the expression."""
    return (face.landmarks(exp) - face.landmarks(target)).norm(dim=-1).mean(-1) * PX_PER_UNIT

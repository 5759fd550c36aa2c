"""How low can audio2nerf's held-out lip error go on a processed dataset? Prints the lip-landmark
error (px at 224, as audio2nerf's evaluation measures it) of simple predictors of the held-out
tail of every clip, each fitted by least squares on that clip's training frames:

- the reference expression (what an untrained model predicts) and the training frames' mean;
- a linear map from the speech energy, from the head pose (yaw, pitch), and from both.

If pose predicts the mouth better than speech does, the fitted expressions follow the head
motion, which no audio model can learn (docs/AUDIO2NERF.md).

    python scripts/lip_error_floor.py runs/<run>/data/processed [--holdout 0.2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerffacespeech.models.audio2nerf.face import lip_distance, load_face_basis  # noqa: E402
from nerffacespeech.train.a2n_data import Clip, TalkingData  # noqa: E402


def linear_fit(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3):
    """Least squares y ~ x (with intercept, a small ridge); returns the predictor."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    weight = torch.linalg.solve(xc.T @ xc + ridge * torch.eye(x.shape[1]), xc.T @ (y - y_mean))
    return lambda z: (z - x_mean) @ weight + y_mean


def energy(clip: Clip) -> torch.Tensor:
    return clip.mel.mean(dim=(1, 2))[:, None]


PREDICTORS = {
    "speech energy": energy,
    "head pose": lambda clip: clip.angles,
    "energy + pose": lambda clip: torch.cat([energy(clip), clip.angles], 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("processed", type=Path)
    parser.add_argument("--holdout", type=float, default=0.2)
    args = parser.parse_args()
    data = TalkingData(args.processed, 32, args.holdout)
    face = load_face_basis(data.face_model)
    errors: dict[str, list[torch.Tensor]] = {"reference expression": [], "training mean": []}
    errors.update({f"linear in {name}": [] for name in PREDICTORS})
    for clip in data.clips:
        train, held = slice(0, clip.n_train), slice(clip.n_train, None)
        fitted = clip.exp[held]
        errors["reference expression"].append(lip_distance(face, clip.ref.expand_as(fitted), fitted))
        errors["training mean"].append(lip_distance(face, clip.exp[train].mean(0).expand_as(fitted), fitted))
        for name, features in PREDICTORS.items():
            x = features(clip)
            predict = linear_fit(x[train], clip.exp[train])
            errors[f"linear in {name}"].append(lip_distance(face, predict(x[held]), fitted))
    print(f"{'held-out predictor (per clip)':32} lip error, px at 224")
    for name, values in errors.items():
        print(f"{name:32} {torch.cat(values).mean().item():.2f}")


if __name__ == "__main__":
    main()

"""How low can audio2nerf's held-out lip error go on a processed dataset? Prints the lip-landmark
error (px at 224, as audio2nerf's evaluation measures it) of simple predictors of the held-out
tail of every clip, each fitted by least squares on that clip's training frames:

- the reference expression (what an untrained model predicts) and the training frames' mean;
- a linear map from the mean log-mel energy of the frame's window, from the fitted head pose
  (yaw, pitch), and from both;
- also printed: how closely the fitted head pose follows the fitted mouth opening (if it does,
  "pose" is the image's own reading of the jaw, not a rival cause);
- with --sample-data: a linear map from the jaw drive that animated the bundled sample clips
  (scripts/make_sample_data.py's loudness), the best any audio model can do on them.

    python scripts/lip_error_floor.py runs/<run>/data/processed [--holdout 0.2] [--sample-data data/sample]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerffacespeech.models.audio2nerf.face import lip_distance, load_face_basis  # noqa: E402
from nerffacespeech.data.processed import ProcessedData  # noqa: E402
from nerffacespeech.train.a2n_data import TalkingData, TrainingClip  # noqa: E402
from nerffacespeech.train.a2n_evaluate import correlation  # noqa: E402


def linear_fit(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3):
    """Least squares y ~ x (with intercept, a small ridge); returns the predictor."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    weight = torch.linalg.solve(xc.T @ xc + ridge * torch.eye(x.shape[1]), xc.T @ (y - y_mean))
    return lambda z: (z - x_mean) @ weight + y_mean


def energy(clip: TrainingClip) -> torch.Tensor:
    return clip.mel.mean(dim=(1, 2))[:, None]


PREDICTORS = {
    "speech energy": energy,
    "head pose": lambda clip: clip.angles,
    "energy + pose": lambda clip: torch.cat([energy(clip), clip.angles], 1),
}


def jaw_drive(sample: Path, processed: Path):
    """Features: the loudness that opened the jaw of each kept frame of a bundled sample clip."""
    import make_sample_data as maker               # a sibling script: scripts/ is sys.path[0]

    def features(clip: TrainingClip) -> torch.Tensor:
        person, name = clip.key.split("/")
        audio, _ = soundfile.read(sample / "audio" / person / f"{name}.wav", dtype="float32")
        n_frames = len(list((sample / "images" / person / name).glob("*.jpg")))
        kept = ProcessedData(processed).read_clip(clip.key).frame_index.astype(int) - 1
        return torch.from_numpy(maker.loudness(audio, n_frames)[kept]).float()[:, None]
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("processed", type=Path)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--sample-data", type=Path, help="the bundled sample data the processed set came from")
    args = parser.parse_args()
    data = TalkingData(args.processed, 32, args.holdout)
    face = load_face_basis(data.face_model)
    predictors = dict(PREDICTORS)
    if args.sample_data:
        predictors["the sample's jaw drive"] = jaw_drive(args.sample_data, args.processed)
    errors: dict[str, list[torch.Tensor]] = {"reference expression": [], "training mean": []}
    errors.update({f"linear in {name}": [] for name in predictors})
    for clip in data.clips:
        train, held = slice(0, clip.n_train), slice(clip.n_train, None)
        fitted = clip.exp[held]
        errors["reference expression"].append(lip_distance(face, clip.ref.expand_as(fitted), fitted))
        errors["training mean"].append(lip_distance(face, clip.exp[train].mean(0).expand_as(fitted), fitted))
        for name, features in predictors.items():
            x = features(clip)
            predict = linear_fit(x[train], clip.exp[train])
            errors[f"linear in {name}"].append(lip_distance(face, predict(x[held]), fitted))
    follow = torch.tensor([[abs(correlation(face.mouth_opening(clip.exp), clip.angles[:, i])) for i in (0, 1)]
                           for clip in data.clips]).mean(0)
    print(f"fitted head pose vs fitted mouth opening, mean |r| over clips: yaw {follow[0]:.2f}, pitch {follow[1]:.2f}")
    print(f"{'held-out predictor (per clip)':40} lip error, px at 224")
    for name, values in errors.items():
        print(f"{name:40} {torch.cat(values).mean().item():.2f}")


if __name__ == "__main__":
    main()

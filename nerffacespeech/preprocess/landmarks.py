"""Face detection + 68-point landmarks (iBUG 300-W order) from either of two landmarkers.

- `fan`: face-alignment's S3FD + 2DFAN4, the production landmarker, built offline from the
  weights in the pretrained folder (`face_alignment/s3fd-619a316812.pth`,
  `face_alignment/2DFAN4-11f355bf06.pth.tar`) with `compile=False`.
- `dlib`: dlib's HOG detector + its 68-point shape predictor, whose model ships inside the
  `face-recognition-models` package: works on any machine with no weights at all.
`auto` takes FAN where its weights exist, else dlib. See docs/PREPROCESSING.md for the choice.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BadInput

S3FD_FILE = "face_alignment/s3fd-619a316812.pth"
FAN_FILE = "face_alignment/2DFAN4-11f355bf06.pth.tar"


@dataclass(frozen=True)
class Face:
    box: np.ndarray          # (4,) x0, y0, x1, y1 in pixels
    score: float             # the detector's confidence (scale differs per detector)
    landmarks: np.ndarray    # (68, 2) x, y in pixels, float32

    @property
    def area(self) -> float:
        return float(max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1]))


class DlibLandmarker:
    """HOG face detector + dlib's 68-point predictor (model shipped in face-recognition-models)."""

    name = "dlib"
    min_score = 0.3          # HOG margins: real faces here score 0.8-2.3, clutter ~0.1

    def __init__(self, upsample: int = 1):
        import dlib

        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path()))
        self._rect = dlib.rectangle

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Every face found in each RGB uint8 image, best first."""
        out = []
        for image in images:
            rects, scores, _ = self._detector.run(np.ascontiguousarray(image), self.upsample, 0.0)
            faces = []
            for rect, score in zip(rects, scores):
                shape = self._predictor(image, rect)
                points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
                box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
                faces.append(Face(box, float(score), points))
            out.append(sorted(faces, key=lambda f: -f.score))
        return out


class FanLandmarker:
    """face-alignment's S3FD detector + 2DFAN4, constructed offline from local weight files."""

    name = "fan"
    min_score = 0.5

    def __init__(self, pretrained_root: Path, device: str = "cpu"):
        import face_alignment

        s3fd, fan = pretrained_root / S3FD_FILE, pretrained_root / FAN_FILE
        with _hub_dir_holding([fan]):
            self._fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device, flip_input=False,
                face_detector="sfd", face_detector_kwargs={"path_to_detector": str(s3fd)},
                compile=False)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        out = []
        for image in images:
            points, _, boxes = self._fa.get_landmarks_from_image(image, return_bboxes=True)
            faces = [Face(np.asarray(b[:4], np.float32), float(b[4]), np.asarray(p[:, :2], np.float32))
                     for p, b in zip(points or [], boxes or [])]
            out.append(sorted(faces, key=lambda f: -f.score))
        return out


def dlib_model_path() -> Path:
    """dlib's 68-point predictor inside face-recognition-models, found without importing it
    (its __init__ needs pkg_resources, which recent setuptools no longer provide)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the dlib landmarker needs `pip install face-recognition-models dlib-bin`")
    return Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"


def fan_weights_present(pretrained_root: Path) -> bool:
    return (pretrained_root / S3FD_FILE).is_file() and (pretrained_root / FAN_FILE).is_file()


def make_landmarker(kind: str, pretrained_root: Path, device: str = "cpu"):
    """The landmarker named by `kind` (auto | fan | dlib)."""
    if kind == "fan" or (kind == "auto" and fan_weights_present(pretrained_root)):
        return FanLandmarker(pretrained_root, device)
    return DlibLandmarker()


def single_face(faces: list[Face], min_score: float, rival_ratio: float = 0.25) -> Face:
    """The one face of a frame; BadInput if none, or if another face is nearly as large and sure."""
    confident = [f for f in faces if f.score >= min_score]
    if not confident:
        best = f" (best score {faces[0].score:.2f} < {min_score})" if faces else ""
        raise BadInput("no_face", f"no face found{best}")
    main = max(confident, key=lambda f: f.area)
    rivals = [f for f in confident if f is not main and f.area >= rival_ratio * main.area]
    if rivals:
        raise BadInput("several_faces", f"{1 + len(rivals)} faces of similar size")
    return main


@contextlib.contextmanager
def _hub_dir_holding(files: list[Path]):
    """A throw-away torch hub folder whose checkpoints/ links `files`, set only while inside."""
    import torch.hub

    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="nfs-hub-") as hub:
        (Path(hub) / "checkpoints").mkdir()
        for f in files:
            os.symlink(f.resolve(), Path(hub) / "checkpoints" / f.name)
        torch.hub.set_dir(hub)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)

"""The preprocessing stage's config: typed, validated once, torch- and numpy-free.

`check(config, resources)` is what the launcher runs at validation; `PreprocessConfig.parse`
is what the task runs in the job. Both report `(field path, message)` problems.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import typed

LANDMARKERS = ("auto", "fan", "dlib")
IMAGE_FORMATS = ("png", "jpg")
SYNTHETIC_BFM = "synthetic"
SOLVERS = ("lm", "lbfgs")
RENDERERS = ("auto", "nvdiffrast", "torch")


@dataclass(frozen=True)
class FitConfig:
    """3DMM fitting (Deep3DFaceRecon's 257 BFM09 coefficients per frame)."""

    enabled: bool = True
    bfm_path: str | None = None          # default: <pretrained_dir>/BFM09_model_info.mat; "synthetic": the
                                         # built-in small model with expression bases (template.build("random"))
    solver: str = "lm"                   # lm: Levenberg-Marquardt on landmarks; lbfgs (photometric)
    lm_steps: int = 20                   # lm: joint anchor iterations; rigid ones: 1/4, per frame: 1/2
    rigid_steps: int = 100               # lbfgs iterations, rotation + translation, anchor frames
    nonrigid_steps: int = 150            # lbfgs iterations, all coefficients, anchor frames
    warm_steps: int = 60                 # lbfgs, per batch of frames, from the interpolated anchors
    batch_frames: int = 32
    photometric: bool = False            # add the skin-masked photometric loss (slow on CPU); with
                                         # solver lm: the landmark fit refined by Adam (steps below)
    appearance_steps: int = 100          # lm + photometric: texture and lighting on the anchors
    photometric_steps: int = 100         # lm + photometric: every frame's expression, pose, lighting
    photometric_batch: int = 256         # lm + photometric: frames refined at once
    photometric_lr: float = 0.01         # lm + photometric: Adam's step size (pose: a tenth of it)
    fit_size: int = 224                  # the fitting image size (Deep3DFaceRecon uses 224)
    renderer: str = "auto"               # photometric rasterizer: auto (nvdiffrast on CUDA where it
                                         # imports, else torch), nvdiffrast, torch

    def unused_settings(self) -> tuple[str, ...]:
        """The photometric refinement's settings unless this fit runs it (lm + photometric)."""
        if self.photometric and self.solver == "lm":
            return ()
        return ("appearance_steps", "photometric_steps", "photometric_batch", "photometric_lr")


NESTED = {"fit3dmm": FitConfig}          # the config's fields that are dataclasses of their own


@dataclass(frozen=True)
class PreprocessConfig:
    data_dir: str
    output_dir: str | None = None        # default: <run_dir>/data/processed
    resolution: int = 256                # aligned crop size, a power of two in [32, 1024]
    min_image_size: int | None = None    # smaller frames are refused; default: resolution
    fps: int = 25
    landmarker: str = "auto"             # auto: FAN where its weights exist, else dlib
    pretrained_dir: str | None = None    # default: $NFS_PRETRAINED_ROOT, else pretrained_networks/ (the manifest's folder)
    smooth_sigma_frames: float = 1.5     # temporal smoothing of landmarks (0: off)
    audio_sample_rates: tuple[int, ...] = (16_000, 22_050)
    silence_dbfs: float = -50.0
    max_av_mismatch_frames: int = 2      # |audio frames − image frames| allowed
    max_bad_frame_fraction: float = 0.2  # more bad frames than this drops the whole clip
    max_frame_gap: int = 5               # longest run of missing frame numbers kept in place (0.2 s);
                                         # a longer one skips the clip (frame_gap)
    image_format: str = "png"            # format of aligned frames inside frames.zip
    fit3dmm: FitConfig = field(default_factory=FitConfig)

    @property
    def min_side(self) -> int:
        return self.min_image_size if self.min_image_size is not None else self.resolution

    def pretrained_root(self) -> Path:
        if self.pretrained_dir:
            return Path(self.pretrained_dir)
        from nerffacespeech.pretrained.manifest import default_root

        return default_root()

    @property
    def synthetic_face_model(self) -> bool:
        """The built-in synthetic morphable model (CI, demo: real BFM09 cannot be downloaded)."""
        return self.fit3dmm.bfm_path == SYNTHETIC_BFM

    def bfm_file(self) -> Path:
        return Path(self.fit3dmm.bfm_path) if self.fit3dmm.bfm_path else \
            self.pretrained_root() / "BFM09_model_info.mat"

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change what is written for an item (paths, budgets, the renderer,
        whose backends render the same: tests/test_render_nvdiffrast_gpu.py, and settings the
        configured fit does not use, excluded: items fitted before those existed stay done)."""
        return {"resolution": self.resolution, "fps": self.fps, "landmarker": self.landmarker,
                "smooth_sigma_frames": self.smooth_sigma_frames, "image_format": self.image_format,
                "min_side": self.min_side, "audio_sample_rates": list(self.audio_sample_rates),
                "silence_dbfs": self.silence_dbfs, "max_av_mismatch_frames": self.max_av_mismatch_frames,
                "max_bad_frame_fraction": self.max_bad_frame_fraction, "max_frame_gap": self.max_frame_gap,
                "fit3dmm": {f.name: getattr(self.fit3dmm, f.name) for f in fields(FitConfig)
                            if f.name not in ("bfm_path", "renderer") + self.fit3dmm.unused_settings()},
                **({"face_model": SYNTHETIC_BFM} if self.synthetic_face_model else {})}

    @classmethod
    def parse(cls, config: dict) -> tuple["PreprocessConfig | None", list[tuple[str, str]]]:
        """The typed config and every problem found (config is None when there are any)."""
        return typed.parse(cls, config, _type_problems, _semantic_problems, nested=NESTED)


def check(config: dict, resources: dict) -> list[tuple[str, str]]:
    """What the launcher runs before submitting, every problem at once: types, ranges, unknown
    keys, the data folder, and the pretrained files this config needs (FAN's, when
    `landmarker: fan`; the others are optional)."""
    cfg, problems = typed.read(PreprocessConfig, config if isinstance(config, dict) else {}, _type_problems,
                               _semantic_problems, nested=NESTED)
    return problems + typed.beyond(problems, _file_problems(cfg))


def _file_problems(cfg: PreprocessConfig) -> list[tuple[str, str]]:
    out = _data_problems(cfg.data_dir) if cfg.data_dir is not None else []
    if cfg.landmarker == "fan":         # auto falls back to dlib, and no BFM means pose-only fitting
        from nerffacespeech.pretrained import verify_for_stage

        found = verify_for_stage("preprocess", cfg.pretrained_root(), {"s3fd": "landmarker", "fan_2d": "landmarker"})
        out += [(f, f"fan (or use auto/dlib) needs {m}") for f, m in found]
    if cfg.fit3dmm.enabled and cfg.fit3dmm.bfm_path and not cfg.synthetic_face_model \
            and not Path(cfg.fit3dmm.bfm_path).is_file():
        out.append(("fit3dmm.bfm_path", f"{cfg.fit3dmm.bfm_path!r} does not exist "
                                        f"(or {SYNTHETIC_BFM!r} for the built-in synthetic model)"))
    return out


def _data_problems(data_dir: str) -> list[tuple[str, str]]:
    data = Path(data_dir)
    if not data.is_dir():
        return [("data_dir", f"{data_dir!r} is not a folder (relative paths are taken from "
                             f"the directory you run the launcher in)")]
    if not any((data / sub).is_dir() for sub in ("images", "videos")):
        return [("data_dir", f"{data_dir!r} has neither images/ nor videos/; see docs/PREPROCESSING.md")]
    return []


_TYPES: dict[Any, tuple[type, ...]] = {
    "str": (str,), "str | None": (str, type(None)), "int": (int,), "int | None": (int, type(None)),
    "float": (int, float), "bool": (bool,), "tuple[int, ...]": (list, tuple),
}


def _type_problems(config: Any) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    _field_problems(PreprocessConfig, config, "", problems, NESTED)
    return problems


def _field_problems(cls, data: Any, prefix: str, problems: list, nested: dict) -> None:
    if not isinstance(data, dict):
        problems.append((prefix.rstrip("."), "must be a mapping"))
        return
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            problems.append((f"{prefix}{key}", typed.unknown_key(key, known)))
    for name, f in known.items():
        path = f"{prefix}{name}"
        if name in nested:
            _field_problems(nested[name], data.get(name) or {}, f"{path}.", problems, {})
            continue
        if name not in data:
            if f.default is f.default_factory:   # both MISSING: a required field
                problems.append((path, "is required"))
            continue
        value, kinds = data[name], _TYPES[str(f.type)]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            problems.append((path, f"must be {str(f.type).replace('tuple[int, ...]', 'a list of integers')}, "
                                   f"got {type(value).__name__} {value!r}"))
        elif kinds == (list, tuple) and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            problems.append((path, "must be a list of integers"))


def _semantic_problems(cfg: PreprocessConfig) -> list[tuple[str, str]]:
    out = []
    r = cfg.resolution
    if r < 32 or r > 1024 or r & (r - 1):
        out.append(("resolution", f"must be a power of two between 32 and 1024, got {r}"))
    if cfg.min_image_size is not None and cfg.min_image_size < 1:
        out.append(("min_image_size", "must be at least 1"))
    if cfg.fps != 25:
        out.append(("fps", f"only 25 fps is supported (the mel windows assume it), got {cfg.fps}"))
    if cfg.landmarker not in LANDMARKERS:
        out.append(("landmarker", f"must be one of {', '.join(LANDMARKERS)}, got {cfg.landmarker!r}"))
    if cfg.image_format not in IMAGE_FORMATS:
        out.append(("image_format", f"must be one of {', '.join(IMAGE_FORMATS)}, got {cfg.image_format!r}"))
    if cfg.smooth_sigma_frames < 0:
        out.append(("smooth_sigma_frames", "must be at least 0"))
    if not cfg.audio_sample_rates or any(s < 8000 for s in cfg.audio_sample_rates):
        out.append(("audio_sample_rates", "must list sample rates of at least 8000 Hz"))
    if cfg.max_av_mismatch_frames < 0:
        out.append(("max_av_mismatch_frames", "must be at least 0"))
    if not 0 <= cfg.max_bad_frame_fraction <= 1:
        out.append(("max_bad_frame_fraction", "must be between 0 and 1"))
    if cfg.max_frame_gap < 0:
        out.append(("max_frame_gap", "must be at least 0 (0: any missing frame number skips the clip)"))
    fit = cfg.fit3dmm
    if fit.solver not in SOLVERS:
        out.append(("fit3dmm.solver", f"must be one of {', '.join(SOLVERS)}, got {fit.solver!r}"))
    if fit.renderer not in RENDERERS:
        out.append(("fit3dmm.renderer", f"must be one of {', '.join(RENDERERS)}, got {fit.renderer!r}"))
    if fit.lm_steps < 1:
        out.append(("fit3dmm.lm_steps", "must be at least 1"))
    for name in ("rigid_steps", "nonrigid_steps", "warm_steps", "appearance_steps", "photometric_steps"):
        if getattr(fit, name) < 0:
            out.append((f"fit3dmm.{name}", "must be at least 0"))
    for name in ("batch_frames", "photometric_batch"):
        if getattr(fit, name) < 1:
            out.append((f"fit3dmm.{name}", "must be at least 1"))
    if not fit.photometric_lr > 0:
        out.append(("fit3dmm.photometric_lr", f"must be above 0, got {fit.photometric_lr}"))
    if fit.fit_size < 64 or fit.fit_size % 8:
        out.append(("fit3dmm.fit_size", "must be a multiple of 8, at least 64"))
    return out


__all__ = ["PreprocessConfig", "FitConfig", "check"]

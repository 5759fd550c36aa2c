"""The `generate` stage's config (audio in, talking-head video out): typed fields, torch-free checks.

`GenerateConfig.parse` is what the task and the CLI run; `check(config, resources)` is what the
launcher runs before submitting. Both report `(field path, message)` problems; paths are
checked by `check` when the config names them (unset, the task reads what earlier stages of
the run write), and again when the task starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import paths, typed
from .typed import Problem, field_problems

CAMERAS = ("fixed", "gentle", "poses")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class GenerateConfig:
    """Everything generation reads; see docs/GENERATION.md for each key."""

    audio: str                                  # speech file, any format ffmpeg/libsndfile decode
    run_dir: str | None = None                  # a run with an audio2nerf stage (default: this run)
    audio2nerf_stage: str = "audio2nerf"        # that stage's name
    audio2nerf: str | None = None               # explicit audio2nerf checkpoint (step folder, latest, checkpoints/)
    generator: str | None = None                # override the generator audio2nerf was trained with
                                                # (stylenerf checkpoint or safetensors, ours or converted)
    output_dir: str | None = None               # default: <stage dir>/samples (task) or required (CLI)
    seeds: tuple = ()                           # identities from the mapping network
    truncation: float = 0.7                     # psi: w = w_avg + psi (w - w_avg)
    face_image: str | None = None               # an identity from a photo, projected into W
    projection_steps: int = 200                 # Adam steps of the W projection
    projection_lr: float = 0.03
    camera: str = "fixed"                       # fixed | gentle | poses
    yaw: float = 0.0                            # fixed camera / centre of the gentle path (radians)
    pitch: float = 0.0
    gentle_yaw: float = 0.12                    # gentle path amplitudes (radians) and period (s)
    gentle_pitch: float = 0.04
    gentle_period: float = 5.0
    poses: str | None = None                    # camera: poses -> a preprocess metadata/poses.json
    pose_clip: str | None = None                # "<person>/<clip>" key prefix in it (default: first clip)
    smoothing_frames: float = 1.0               # Gaussian sigma of the expression smoothing (0: off)
    batch_size: int = 8                         # frames rendered per generator call
    max_audio_seconds: float = 120.0            # longer audio is refused
    silence_dbfs: float = -50.0                 # quieter audio is refused
    sheet_frames: int = 8                       # frames on the contact sheet
    crf: int = 18                               # H.264 quality (lower is better)
    device: str = "auto"                        # auto: cuda when available
    seed: int = 0                               # projection's and noise's random generator

    @classmethod
    def parse(cls, config: Any) -> tuple["GenerateConfig | None", list[tuple[str, str]]]:
        """The typed config and every problem found (None when there are any)."""
        return typed.parse(cls, config, _type_problems, _value_problems)


def _type_problems(config: Any) -> list[Problem]:
    problems = field_problems(config, GenerateConfig, {"audio": "the speech file to animate"})
    if not isinstance(config, dict):
        return problems
    seeds = config.get("seeds")
    if isinstance(seeds, (list, tuple)) and not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                    for s in seeds):
        problems.append(("seeds", f"must be non-negative integers, got {list(seeds)}"))
    return problems


def _value_problems(cfg: GenerateConfig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not cfg.seeds and not cfg.face_image:
        out.append(("seeds", "give at least one seed or a face_image: no identity to animate"))
    if not 0 <= cfg.truncation <= 1:
        out.append(("truncation", f"must be in [0, 1], got {cfg.truncation}"))
    if cfg.camera not in CAMERAS:
        out.append(("camera", f"must be one of {', '.join(CAMERAS)}, got {cfg.camera!r}"))
    if cfg.camera == "poses" and not cfg.poses:
        out.append(("poses", "camera: poses needs the path of a poses.json (preprocess metadata)"))
    if cfg.device not in DEVICES:
        out.append(("device", f"must be one of {', '.join(DEVICES)}, got {cfg.device!r}"))
    for name in ("batch_size", "sheet_frames", "projection_steps"):
        if getattr(cfg, name) < 1:
            out.append((name, "must be at least 1"))
    for name in ("max_audio_seconds", "gentle_period", "projection_lr"):
        if getattr(cfg, name) <= 0:
            out.append((name, "must be positive"))
    if cfg.smoothing_frames < 0:
        out.append(("smoothing_frames", "must be at least 0"))
    if not 0 <= cfg.crf <= 51:
        out.append(("crf", f"must be in [0, 51] (H.264), got {cfg.crf}"))
    return out


def _file_problems(cfg: GenerateConfig) -> list[Problem]:
    """The files it reads that the config names; unset checkpoints are the earlier stages' outputs."""
    return (paths.need_file("audio", cfg.audio, "the speech file to animate")
            + paths.need_file("face_image", cfg.face_image, "a photo of the identity")
            + paths.need_file("poses", cfg.poses, "a preprocess metadata/poses.json")
            + paths.need_folder("run_dir", cfg.run_dir, "a run with an audio2nerf stage")
            + paths.need_existing("audio2nerf", cfg.audio2nerf, "an audio2nerf checkpoint: step folder, "
                                  "`latest` or checkpoints/")
            + paths.need_existing("generator", cfg.generator, "a StyleNeRF checkpoint or G safetensors"))


def check(config: dict, resources: dict) -> list[tuple[str, str]]:
    """What the launcher runs before submitting: types and ranges, the files the config names,
    and one process (every process would write the same files)."""
    cfg, problems = typed.read(GenerateConfig, config, _type_problems, _value_problems)
    if cfg is not None:
        problems += typed.beyond(problems, _file_problems(cfg))
    world = int(resources.get("world_size") or 1)
    if world > 1:
        problems.append(("", f"generate runs as one process; the stage asks for {world} "
                             "(give it resources: {tasks_per_node: 1, nodes: 1})"))
    return problems


__all__ = ["CAMERAS", "GenerateConfig", "check"]

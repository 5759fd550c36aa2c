"""The `audio2nerf.train` stage's config: typed fields and torch-free validation.

`check(config, resources)` runs in the launcher before submitting (problems come back as
`(field path, message)` and the launcher prints them at the spec's file:line); `TrainConfig.parse`
runs in the job. Model numbers default to the seed guide (audio_dim 256, nerf_dim 512, lr 1e-4).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from . import paths, typed
from .stylenerf import ENGINES, PRECISIONS, PRESETS, training_problems
from .typed import field_problems

RANDOM_GENERATOR = "random"
N_MELS = 80                                 # mel channels of a window (preprocess.audio.N_MELS; kept here so
                                            # the launcher's config check does not import scipy/soundfile)
DEFAULT_GENERATOR_STAGE = "stylenerf"


@dataclass(frozen=True)
class ModelConfig:
    """The trained networks' sizes (recorded in every checkpoint, read back by the talking head)."""

    audio_dim: int = 256            # audio features per video frame
    nerf_dim: int = 512             # the generator's W space (must equal its w_dim)
    encoder_width: float = 1.0      # channel multiplier of the conv encoder (1: SadTalker's shapes)
    lipaint_layers: int = 4
    deform_sigma: float = 0.01      # falloff of the ray deformation, generator world units (face ~0.13 wide)
    deform_vertices: int = 4096     # most mobile 3DMM vertices the sample points are matched to


@dataclass(frozen=True)
class TrainConfig:
    data: str | None = None                 # processed dataset; null: <run_dir>/data/processed (the merge stage's)
    generator: str | None = None            # StyleNeRF checkpoint dir / `latest` / G safetensors / "random";
                                            # null: <run_dir>/stages/stylenerf/checkpoints/latest
    generator_preset: str = "tiny"          # architecture for "random" or a bare safetensors file
    audio_dim: int = 256
    nerf_dim: int = 512
    encoder_width: float = 1.0
    lipaint_layers: int = 4
    deform_sigma: float = 0.01
    deform_vertices: int = 4096
    sadtalker: str | None = None            # SadTalker_V0.0.2_256.safetensors: init the audio encoder from audio2exp
    init_from: str | None = None            # safetensors of a trained objective (net.*, latents, w_init) to start
                                            # from (fine-tuning; nerffacespeech.pretrained.demo_weights exports one)
    engine: str = "deepspeed"
    zero_stage: int = 2
    precision: str = "auto"
    batch_per_gpu: int = 16                 # sequences per process and micro-batch
    batch_total: int | None = None          # per optimizer step; the rest is gradient accumulation
    seq_len: int = 5                        # consecutive frames per sequence (temporal loss)
    render_batch: int = 4                   # frames per micro-batch rendered for LipaintNet (0: off)
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    latent_lr_mult: float = 100.0           # per-clip latents learn this much faster (equalized-lr style)
    max_steps: int = 2000
    holdout: float = 0.2                    # last fraction of every clip is held out for evaluation
    augment_gain_db: float = 10.0           # training windows: level shift in ±dB per sequence
    augment_noise: float = 0.6              # training windows: Gaussian noise, normalised log-mel units
    augment_freq_mask: int = 40             # training windows: up to this many mel channels masked per sequence
    exp_weight: float = 1.0
    lip_weight: float = 0.1                 # lip landmark distance in px at 224
    smooth_weight: float = 0.5              # L1 of frame-to-frame expression differences
    photo_weight: float = 1.0               # LipaintNet: L1 of rendered vs real frames
    mouth_weight: float = 4.0               # pixel weight inside the mouth box
    keep_weight: float = 1.0                # LipaintNet: L1 outside the mouth box to the rendering without it
    log_every: int = 10
    eval_every: int = 50
    seed: int = 0
    threads: int | None = None

    @property
    def model(self) -> ModelConfig:
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})

    def resolved(self, world_size: int) -> "TrainConfig":
        from dataclasses import replace

        return replace(self, batch_total=self.batch_total or self.batch_per_gpu * world_size)

    def accumulation(self, world_size: int) -> int:
        r = self.resolved(world_size)
        return r.batch_total // (r.batch_per_gpu * world_size)

    @classmethod
    def parse(cls, config: Any) -> tuple["TrainConfig | None", list[tuple[str, str]]]:
        """The typed config and every problem found (None when there are any)."""
        cfg, problems = _read(config)
        return (None if problems else cfg), problems


def _read(config: Any) -> tuple[TrainConfig | None, list[tuple[str, str]]]:
    """Every type and value problem, and the stand-in the values were checked on (typed.read)."""
    return typed.read(TrainConfig, {} if config is None else config, lambda c: field_problems(c, TrainConfig),
                      _value_problems)


def _value_problems(cfg: TrainConfig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if cfg.generator_preset not in PRESETS:
        out.append(("generator_preset", f"must be one of {', '.join(PRESETS)}, got {cfg.generator_preset!r}"))
    if cfg.engine not in ENGINES:
        out.append(("engine", f"must be one of {', '.join(ENGINES)}, got {cfg.engine!r}"))
    if cfg.zero_stage not in (0, 1, 2, 3):
        out.append(("zero_stage", f"must be 0, 1, 2 or 3, got {cfg.zero_stage}"))
    if cfg.precision not in PRECISIONS:
        out.append(("precision", f"must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}"))
    for name in ("audio_dim", "nerf_dim", "lipaint_layers", "deform_vertices", "batch_per_gpu", "max_steps",
                 "log_every", "eval_every"):
        if getattr(cfg, name) < 1:
            out.append((name, "must be at least 1"))
    if cfg.seq_len < 2:
        out.append(("seq_len", "must be at least 2 (the temporal loss needs neighbours)"))
    if cfg.batch_total is not None and cfg.batch_total < 1:
        out.append(("batch_total", "must be at least 1"))
    if cfg.threads is not None and cfg.threads < 1:
        out.append(("threads", "must be at least 1"))
    if not 0 < cfg.render_batch <= cfg.batch_per_gpu and cfg.render_batch != 0:
        out.append(("render_batch", f"must be between 0 and batch_per_gpu {cfg.batch_per_gpu}"))
    if not 0 < cfg.holdout < 1:
        out.append(("holdout", "must be a fraction in (0, 1)"))
    for name in ("encoder_width", "deform_sigma", "lr", "eps", "latent_lr_mult"):
        if getattr(cfg, name) <= 0:
            out.append((name, "must be positive"))
    for name in ("exp_weight", "lip_weight", "smooth_weight", "photo_weight", "mouth_weight", "keep_weight",
                 "augment_gain_db", "augment_noise"):
        if not getattr(cfg, name) >= 0:                  # NaN too
            out.append((name, "must be at least 0"))
    if not 0 <= cfg.augment_freq_mask < N_MELS:
        out.append(("augment_freq_mask", f"must be between 0 and {N_MELS - 1} mel channels"))
    if len(cfg.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in cfg.betas):
        out.append(("betas", f"must be two numbers in [0, 1), got {list(cfg.betas)}"))
    return out


def check(config: dict, resources: dict) -> list[tuple[str, str]]:
    """What the launcher runs before submitting, every problem at once: types, ranges, the files
    the config names (data, generator, sadtalker, init_from), and engine/precision support and the batch
    split as far as the fields they read are right."""
    cfg, problems = _read(config)
    if cfg is None:
        return problems
    problems += typed.beyond(problems, _file_problems(cfg))
    return problems + training_problems(cfg, resources, problems)


def _file_problems(cfg: TrainConfig) -> list[tuple[str, str]]:
    """The files it reads that the config names; unset ones are the earlier stages' outputs."""
    generator = None if cfg.generator == RANDOM_GENERATOR else cfg.generator
    return (paths.need_folder("data", cfg.data, "a processed dataset, written by preprocess.merge")
            + paths.need_existing("generator", generator, "a StyleNeRF checkpoint folder, `latest` or "
                                  f"G safetensors, or {RANDOM_GENERATOR!r}")
            + paths.need_file("sadtalker", cfg.sadtalker, "SadTalker's safetensors, see docs/PRETRAINED.md")
            + paths.need_file("init_from", cfg.init_from, "an audio2nerf objective's safetensors to start from"))


__all__ = ["ModelConfig", "TrainConfig", "check", "RANDOM_GENERATOR", "DEFAULT_GENERATOR_STAGE"]

"""The `stylenerf.train` stage's config: the presets' numbers, typed fields, torch-free validation.

`check(config, resources)` is what the launcher runs before submitting; `TrainConfig.parse` is
what the task runs in the job. Both report `(field path, message)` problems. Presets differ only
in numbers; `model:` overrides any of them (the tests shrink `tiny` further that way).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import kept_batch, paths, typed
from .typed import Problem, field_problems

ENGINES = ("deepspeed", "ddp")
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
METRICS = ("swd", "fid50k_full", "fid10k", "fid2k")
AUGMENT_MODES = ("none", "fixed", "ada")      # discriminator augmentation (docs/STYLENERF.md, ADA)
AUTO_GRAPHS_MAX_RESOLUTION = 512       # cuda_graphs: auto graphs the regularisers up to this output size
BATCH_FIELDS = ("preset", "model", "batch_per_gpu", "batch_total")   # what a batch split is made of


@dataclass(frozen=True)
class ModelConfig:
    """Architecture numbers. Defaults are facebookresearch/StyleNeRF's stylenerf_ffhq at 1024 px."""

    resolution: int = 1024              # output image size
    nerf_resolution: int = 32           # the volume-rendered feature map (and D's low-res head)
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    fg_hidden: int = 128                # foreground NeRF: modulated MLP width
    fg_blocks: int = 8                  # ... and depth
    bg_hidden: int = 64                 # background NeRF++ (inverse sphere) width
    bg_blocks: int = 4
    frequencies: int = 10               # positional encoding octaves (fg and bg)
    feature_channels: int = 256         # channels of the rendered feature map
    coarse_samples: int = 14
    fine_samples: int = 14              # hierarchical samples drawn from the coarse weights
    bg_samples: int = 4
    fov_degrees: float = 12.0
    yaw_std: float = 0.3                # Gaussian camera prior (radians)
    pitch_std: float = 0.155
    depth_near: float = 0.88
    depth_far: float = 1.12
    bg_start: float = 0.5               # background inverse radius where sampling starts
    up_channel_base: int = 32768        # upsampler channels at resolution r: min(base // r, max)
    up_channel_max: int = 1024
    up_kernel: int = 1                  # 1x1 as the original (keeps the upsampler 3D-consistent)
    d_channel_base: int = 32768         # discriminator channels at r: min(base // r, max)
    d_channel_max: int = 512
    mbstd_group: int = 4

    @property
    def upsampler_resolutions(self) -> list[int]:
        """The resolutions of the upsampler blocks (empty when the NeRF renders at full size)."""
        out, res = [], self.nerf_resolution * 2
        while res <= self.resolution:
            out.append(res)
            res *= 2
        return out


@dataclass(frozen=True)
class Preset:
    """A preset: the architecture plus the training numbers that go with it."""

    model: ModelConfig
    batch_total: int
    batch_per_gpu: int
    lr_g: float
    lr_d: float
    r1_gamma: float
    ema_kimg: float
    kimg: float
    curriculum_kimg: tuple[float, float] | None
    tick_kimg: float


PRESETS: dict[str, Preset] = {
    # Seed guide: 8 GPUs, total batch 32 (4 per GPU), lr 0.002, 25000 kimg. R1 gamma and EMA
    # follow the original's conf/spec/paper*.yaml (gamma 0.5 at 256/512, 2 at 1024).
    "paper256": Preset(ModelConfig(resolution=256, d_channel_base=16384), 32, 4, 0.002, 0.002, 0.5,
                       10.0, 25000, (500, 5000), 4.0),
    "paper512": Preset(ModelConfig(resolution=512), 32, 4, 0.002, 0.002, 0.5, 10.0, 25000, (500, 5000), 4.0),
    "paper1024": Preset(ModelConfig(resolution=1024), 32, 4, 0.002, 0.002, 2.0, 10.0, 25000, (500, 5000), 4.0),
    # CPU tests and the demo: a few hundred thousand parameters, 32 px from a 16 px NeRF.
    "tiny": Preset(ModelConfig(resolution=32, nerf_resolution=16, z_dim=128, w_dim=128, mapping_layers=4,
                               fg_hidden=64, fg_blocks=4, bg_hidden=16, bg_blocks=2, frequencies=6,
                               feature_channels=64, coarse_samples=8, fine_samples=8, bg_samples=2,
                               up_channel_base=1024, up_channel_max=64, d_channel_base=1024,
                               d_channel_max=64, mbstd_group=4),
                   16, 8, 0.0025, 0.0025, 0.05, 0.5, 20, None, 1.0),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything the training task reads from its stage's `config:`; unset numbers come from the preset."""

    data: str                                   # folder or zip of aligned images (searched recursively)
    preset: str = "tiny"
    model: dict = field(default_factory=dict)   # overrides of ModelConfig fields
    engine: str = "deepspeed"                   # deepspeed | ddp (baseline, no ZeRO)
    zero_stage: int = 2
    precision: str = "auto"                     # auto: bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU
    batch_per_gpu: int | None = None            # per process ("GPU" on CPU too)
    batch_total: int | None = None              # per optimizer step; the rest is gradient accumulation
    lr_g: float | None = None
    lr_d: float | None = None
    betas: tuple = (0.0, 0.99)
    eps: float = 1e-8
    kimg: float | None = None                   # training length in thousands of real images shown
    max_steps: int | None = None                # stop earlier (tests, benchmarks)
    ema_kimg: float | None = None
    r1_gamma: float | None = None
    r1_every: int = 16                          # lazy regularisation intervals (0 disables)
    pl_weight: float = 2.0
    pl_every: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing: float = 0.9
    nerf_path_weight: float = 2.0
    nerf_path_pixels: int = 16
    curriculum_kimg: tuple | None = ()          # () = the preset's; None = full resolution from the start
    mirror: bool = True
    augment: str = "none"                       # what D sees: none | fixed (p = augment_p) | ada (p adapts)
    augment_p: float = 0.0                      # p at the start (ada) or throughout (fixed)
    ada_target: float = 0.6                     # ada: the r_t = E[sign(D(real))] that p is driven to
    ada_kimg: float = 500.0                     # ada: p can go from 0 to 1 in this many kimg at most
    ada_interval: int = 4                       # ada: steps between updates of p
    seed: int = 0
    tick_kimg: float | None = None
    snapshot_ticks: int = 50                    # checkpoint-independent image grid + metrics
    metrics: tuple = ("swd",)
    metric_images: int = 1024                   # generated images per SWD evaluation
    inception_weights: str | None = None        # FID: default <pretrained root>/pt_inception-2015-12-05-6726825d.pth
    init_from: str | None = None                # safetensors with G.*, D.*, G_ema.* to start from (fine-tuning)
    workers: int = 3
    compile: bool | str = "auto"                # torch.compile the NeRF, upsampler and D blocks; auto: on GPUs
    cuda_graphs: bool | str = "auto"            # R1/path length replayed from CUDA graphs; auto: GPUs, <= 512 px
    activation_checkpointing: bool = False
    channels_last: bool = True                  # CUDA only
    threads: int | None = None                  # torch CPU threads per process
    grid_seeds: int = 16                        # fixed seeds of the snapshot image grid
    wandb: bool = False                         # offline W&B logging when the package is installed

    def compiles(self, device_type: str) -> bool:
        """Whether to torch.compile. `auto` compiles on CUDA, where it measured 1.2-1.5x the eager
        images/s after ~2 minutes of compilation, and not on CPU, where it was slower."""
        return self.compile if isinstance(self.compile, bool) else device_type == "cuda"

    def captures_graphs(self, device_type: str) -> bool:
        """Whether the regularisers' double-backward passes (eager: torch.compile cannot
        differentiate twice) replay from CUDA graphs, which only CUDA devices have. `auto` does up
        to 512 px: at 256 px they made training 1.2x faster for a 2.6 GiB graph memory pool; at
        1024 px about 1.07x for 12 GiB, which a 24 GB card cannot spare."""
        if isinstance(self.cuda_graphs, bool):
            return self.cuda_graphs and device_type == "cuda"
        return device_type == "cuda" and self.model_config.resolution <= AUTO_GRAPHS_MAX_RESOLUTION

    def inception_path(self) -> str:
        """The FID Inception weights: the configured file, else the pretrained manifest's location."""
        if self.inception_weights:
            return self.inception_weights
        from nerffacespeech.pretrained.manifest import default_root

        return str(default_root() / INCEPTION_FILE)

    @property
    def preset_numbers(self) -> Preset:
        return PRESETS[self.preset]

    @property
    def model_config(self) -> ModelConfig:
        return replace(self.preset_numbers.model, **self.model)

    def resolved(self, world_size: int) -> "TrainConfig":
        """The config with every preset-dependent number filled in for `world_size` processes."""
        p = self.preset_numbers
        per_gpu = self.batch_per_gpu or p.batch_per_gpu
        return replace(
            self, batch_per_gpu=per_gpu, batch_total=self.batch_total or per_gpu * world_size,
            lr_g=self.lr_g if self.lr_g is not None else p.lr_g,
            lr_d=self.lr_d if self.lr_d is not None else p.lr_d,
            kimg=self.kimg if self.kimg is not None else p.kimg,
            ema_kimg=self.ema_kimg if self.ema_kimg is not None else p.ema_kimg,
            r1_gamma=self.r1_gamma if self.r1_gamma is not None else p.r1_gamma,
            curriculum_kimg=p.curriculum_kimg if self.curriculum_kimg == () else self.curriculum_kimg,
            tick_kimg=self.tick_kimg if self.tick_kimg is not None else p.tick_kimg)

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each process."""
        cfg = self.resolved(world_size)
        return cfg.batch_total // (cfg.batch_per_gpu * world_size)

    @classmethod
    def parse(cls, config: Any) -> tuple["TrainConfig | None", list[tuple[str, str]]]:
        """The typed config and every problem found (the config is None when there are any)."""
        return typed.parse(cls, config, _type_problems, _value_problems)


def _type_problems(config: Any) -> list[Problem]:
    problems = field_problems(config, TrainConfig, {"data": "a folder or zip of aligned face images"})
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        problems += field_problems(config["model"], ModelConfig, prefix="model.")
    return problems


def _value_problems(cfg: TrainConfig) -> list[tuple[str, str]]:
    if cfg.preset in PRESETS:
        out = _model_problems(cfg.model_config)
    else:                               # the model's numbers are the preset's: nothing to judge
        out = [("preset", f"must be one of {', '.join(PRESETS)}, got {cfg.preset!r}")]
    if cfg.engine not in ENGINES:
        out.append(("engine", f"must be one of {', '.join(ENGINES)}, got {cfg.engine!r}"))
    if cfg.zero_stage not in (0, 1, 2, 3):
        out.append(("zero_stage", f"must be 0, 1, 2 or 3, got {cfg.zero_stage}"))
    for name in ("compile", "cuda_graphs"):
        value = getattr(cfg, name)
        if isinstance(value, str) and value != "auto":
            out.append((name, f"must be true, false or auto, got {value!r}"))
    if cfg.precision not in PRECISIONS:
        out.append(("precision", f"must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}"))
    if len(cfg.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in cfg.betas):
        out.append(("betas", f"must be two numbers in [0, 1), got {list(cfg.betas)}"))
    for name in ("batch_per_gpu", "batch_total", "max_steps", "pl_batch_shrink", "snapshot_ticks",
                 "metric_images", "grid_seeds", "threads"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            out.append((name, "must be at least 1"))
    if cfg.augment not in AUGMENT_MODES:
        out.append(("augment", f"must be one of {', '.join(AUGMENT_MODES)}, got {cfg.augment!r}"))
    if not 0 <= cfg.augment_p <= 1:
        out.append(("augment_p", "must be between 0 and 1"))
    if not 0 < cfg.ada_target < 1:
        out.append(("ada_target", "must be between 0 and 1 (exclusive)"))
    if cfg.ada_kimg <= 0:
        out.append(("ada_kimg", "must be positive"))
    if cfg.ada_interval < 1:
        out.append(("ada_interval", "must be at least 1"))
    for name in ("r1_every", "pl_every", "nerf_path_pixels", "workers"):
        if getattr(cfg, name) < 0:
            out.append((name, "must be at least 0"))
    if not 0 <= cfg.style_mixing <= 1:
        out.append(("style_mixing", "must be between 0 and 1"))
    if cfg.curriculum_kimg and (len(cfg.curriculum_kimg) != 2 or cfg.curriculum_kimg[0] > cfg.curriculum_kimg[1]):
        out.append(("curriculum_kimg", "must be [start, end] in kimg with start <= end, or null"))
    unknown_metrics = [x for x in cfg.metrics if x not in METRICS]
    if unknown_metrics:
        out.append(("metrics", f"unknown {unknown_metrics}; known: {', '.join(METRICS)}"))
    return out


def _model_problems(m: ModelConfig) -> list[tuple[str, str]]:
    out = []
    r, n = m.resolution, m.nerf_resolution
    if r & (r - 1) or n & (n - 1) or not 8 <= n <= r <= 1024:
        out.append(("model.resolution", f"resolution {r} and nerf_resolution {n} must be powers of two "
                                        "with 8 <= nerf_resolution <= resolution <= 1024"))
    for res in m.upsampler_resolutions:
        if min(m.up_channel_base // res, m.up_channel_max) < 4:
            out.append(("model.up_channel_base", f"gives fewer than 4 upsampler channels at {res} px"))
            break
    return out


def support_problems(engine: str, zero_stage: int, precision: str, device: str) -> list[tuple[str, str]]:
    """Engine/ZeRO/precision/device combinations that are not supported, and why.

    Measured (docs/STYLENERF.md): with the regularisers computed on a hook-free functional
    replica and their gradients injected through the engine's own backward, DeepSpeed ZeRO 0-3
    train correctly in fp32 and bf16 (CPU/gloo, 2 ranks). DeepSpeed's CPU accelerator refuses
    fp16 ("Type fp16 is not supported on your device"). DDP has no ZeRO stages.
    """
    out = []
    if engine == "ddp" and zero_stage != 0:
        out.append(("zero_stage", f"engine ddp has no ZeRO stages; set zero_stage: 0 or engine: deepspeed "
                                  f"(got zero_stage {zero_stage})"))
    if engine == "deepspeed" and precision == "fp16" and device == "cpu":
        out.append(("precision", "DeepSpeed cannot train fp16 on CPU (its CPU accelerator refuses the type); "
                                 "use bf16 or fp32 on CPU, fp16 only on CUDA GPUs"))
    if engine == "ddp" and precision == "fp16" and device == "cpu":
        out.append(("precision", "fp16 autocast with loss scaling is a GPU mode; use bf16 or fp32 on CPU"))
    return out


def training_problems(cfg: Any, resources: dict, known: list[Problem]) -> list[Problem]:
    """The problems of a training config's engine and precision on the stage's device and of its
    batch split across the stage's processes (shared by the training tasks), each judged only
    when the fields it reads have no problem in `known`: a stand-in default would be judged."""
    world = int(resources.get("world_size") or 1)
    out = []
    if typed.sound(known, "engine", "zero_stage", "precision"):
        out += support_problems(cfg.engine, cfg.zero_stage, cfg.precision, str(resources.get("device") or "auto"))
    if typed.sound(known, *BATCH_FIELDS):
        r = cfg.resolved(world)
        checkpoints = resources.get("checkpoint_dir")       # set when `resume --set` changes resources
        try:
            r = kept_batch.kept_batch_total(cfg, r, checkpoints and kept_batch.recorded_batch(Path(checkpoints)),
                                            world)
        except ValueError as refused:
            return out + [("batch_total", f"cannot resume on {world} process(es): {refused}")]
        if r.batch_total % (r.batch_per_gpu * world):
            out.append(("batch_total", f"{r.batch_total} is not a multiple of batch_per_gpu {r.batch_per_gpu} "
                                       f"x {world} processes"))
    return out


def check(config: dict, resources: dict) -> list[tuple[str, str]]:
    """What the launcher runs before submitting, every problem at once: types, ranges, presets,
    the files it would read (the data; FID's Inception weights only when a `fid` metric is on;
    `init_from`), and ZeRO/precision and the batch split as far as the fields they read are
    right. Training from scratch needs no pretrained network."""
    cfg, problems = typed.read(TrainConfig, config, _type_problems, _value_problems)
    if cfg is None:
        return problems
    problems += typed.beyond(problems, _file_problems(cfg))
    out = training_problems(cfg, resources, problems)
    if typed.sound(problems, *BATCH_FIELDS, "pl_weight", "pl_every", "pl_batch_shrink"):
        r = cfg.resolved(int(resources.get("world_size") or 1))
        group = min(r.model_config.mbstd_group, r.batch_per_gpu)
        if r.batch_per_gpu % group:
            out.append(("batch_per_gpu", f"must be a multiple of the minibatch-std group {group}"))
        if r.pl_weight and r.pl_every and r.batch_per_gpu // r.pl_batch_shrink < 1:
            out.append(("pl_batch_shrink", f"leaves no image of batch_per_gpu {r.batch_per_gpu}"))
    return problems + out


def _file_problems(cfg: TrainConfig) -> list[tuple[str, str]]:
    out = paths.need_folder_or_zip("data", cfg.data, "a folder or zip of aligned face images")
    if cfg.init_from and not os.path.isfile(cfg.init_from):
        out.append(("init_from", f"{cfg.init_from!r} does not exist (export it with "
                                 "nerffacespeech.pretrained.stylenerf_pkl, see docs/PRETRAINED.md)"))
    if any(m.startswith("fid") for m in cfg.metrics):
        if cfg.inception_weights:
            if not os.path.isfile(cfg.inception_weights):
                out.append(("inception_weights", f"{cfg.inception_weights!r} does not exist"))
        else:
            from nerffacespeech.pretrained import verify_for_stage

            root = os.path.dirname(cfg.inception_path())
            out += [(f, f"FID needs {m}") for f, m in verify_for_stage("fid", root, {"inception_fid": "metrics"})]
    return out


__all__ = ["ModelConfig", "Preset", "PRESETS", "TrainConfig", "check", "support_problems"]

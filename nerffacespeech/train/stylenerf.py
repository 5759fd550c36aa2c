"""The `stylenerf.train` task: StyleNeRF GAN training under DeepSpeed ZeRO 0-3 or DDP.

A step, top to bottom: the generator phase (non-saturating loss through a frozen view of D,
the NeRF-path loss, and every `pl_every` steps the path-length penalty's weight gradients
injected), then the discriminator phase (logistic loss on generated and real images, and every
`r1_every` steps R1's weight gradients injected), then the EMA of G; on GPUs the two lazy
regularisers replay from CUDA graphs. Every tick: a progress line and a metrics line; every
`snapshot_ticks`: an image grid of fixed seeds and the metrics. Checkpoints, stop requests and
resume come from the step loop (`launcher.runtime.loop`); a resumed run continues bitwise (the
data position and every random generator are part of the checkpoint).
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from launcher.atomic import write_bytes
from launcher.heartbeat import on_step_loop
from launcher.runtime import checkpoint, compile_cache, distributed
from launcher.runtime.context import TaskContext
from launcher.runtime.loop import StepLoop, tensor_digest
from launcher.runtime.metrics import MetricsWriter, Window
from nerffacespeech.configs.stylenerf import TrainConfig, support_problems
from nerffacespeech.metrics.evaluate import MetricSuite
from nerffacespeech.models.stylenerf import Discriminator, Generator, count_parameters, draws
from nerffacespeech.models.stylenerf.layers import resize_images

from . import images as image_data
from . import losses, startup
from .ada import AdaptiveP, AugmentPipe
from .engine import EngineSpec, Regulariser, make_trainable, resolve_precision

W_AVG_BETA = 0.995
RANK_MEANS = ("loss_g", "loss_d", "score_real", "score_fake", "rt", "r1_penalty", "pl_penalty", "nerf_path")


def growth(kimg: float, curriculum: tuple | None, stages: int) -> tuple[int, float]:
    """Progressive growing: (upsampler blocks in use, fade of the newest) at `kimg` images shown.

    Between curriculum[0] and curriculum[1] kimg the resolution grows linearly in octaves from
    the NeRF's to the output's; outside it is the NeRF's resolution (before) or full (after).
    """
    if not curriculum or stages == 0:
        return stages, 1.0
    start, end = curriculum
    alpha = min(max((kimg - start) / (end - start), 0.0), 1.0) if end > start else float(kimg >= start)
    level = alpha * stages
    stage = math.ceil(level)
    return (stage, level - (stage - 1)) if stage > 0 else (0, 1.0)


@dataclass
class RunState:
    """What the loop carries between steps besides the networks (saved as the `progress` dict)."""

    progress: dict

    @classmethod
    def fresh(cls) -> "RunState":
        return cls({"step": 0, "images": 0, "pl_mean": 0.0, "tick": 0})


class StyleNeRFTraining:
    """The networks under their engines, the EMA generator, and the two phases of a training step."""

    def __init__(self, cfg: TrainConfig, env: distributed.DistEnv):
        self.cfg, self.env = cfg, env
        self.precision = resolve_precision(cfg.precision, env.device)
        problems = support_problems(cfg.engine, cfg.zero_stage, self.precision, env.device.type)
        if problems:
            raise ValueError("; ".join(f"{f}: {m}" for f, m in problems))
        self.model_cfg = cfg.model_config
        self.accumulation = cfg.accumulation(env.world_size)
        if env.device.type == "cuda":
            torch.backends.cudnn.benchmark = cudnn_benchmark(self.precision)
        torch.manual_seed(cfg.seed)                          # identical initial weights on every rank
        generator, discriminator = Generator(self.model_cfg), Discriminator(self.model_cfg)
        self.sizes = {"G": count_parameters(generator), "D": count_parameters(discriminator)}
        channels_last = cfg.channels_last and env.device.type == "cuda"
        generator.channels_last = discriminator.channels_last = channels_last
        generator.set_activation_checkpointing(cfg.activation_checkpointing)
        g_ema = copy.deepcopy(generator)
        if cfg.init_from:
            _load_initial_weights(cfg.init_from, {"G": generator, "D": discriminator, "G_ema": g_ema})
        self.g_ema = g_ema.eval().requires_grad_(False).to(env.device)
        self.progressive = bool(cfg.curriculum_kimg) and generator.stages > 0

        def spec(lr: float, unused_parameters: bool) -> EngineSpec:
            return EngineSpec(cfg.engine, cfg.zero_stage, self.precision, lr,
                              tuple(cfg.betas), cfg.eps, cfg.batch_per_gpu, self.accumulation,
                              find_unused_parameters=unused_parameters,
                              cuda_graphs=cfg.captures_graphs(env.device.type))

        compiled = cfg.compiles(env.device.type)
        if compiled:
            _compile_blocks(generator, discriminator)
        # DDP must be told about weights a step may not use: G's upper blocks while growing,
        # D's half-resolution entry outside a fade-in
        self.g = make_trainable("G", generator, lambda: Generator(self.model_cfg), spec(cfg.lr_g, self.progressive),
                                env)
        self.d = make_trainable("D", discriminator, lambda: Discriminator(self.model_cfg), spec(cfg.lr_d, True), env)
        if compiled and _compiled_blocks_follow_swapped_weights():
            # the frozen calls too (first-order only); the regularisers' replicas stay eager
            _compile_blocks(self.g.frozen_replica, self.d.frozen_replica)
        self.num_ws = generator.num_ws
        self.ema_beta = 0.5 ** (cfg.batch_total / max(cfg.ema_kimg * 1000, 1e-8))
        self.pl_mean = torch.zeros((), device=env.device)       # running mean path length (kept on device)
        self.ada = AdaptiveP(cfg.augment, cfg.augment_p, cfg.ada_target, cfg.ada_kimg, cfg.ada_interval, env.device)
        self.augment_pipe = AugmentPipe() if cfg.augment != "none" else None
        self._sync_p()

    def augment(self, images: torch.Tensor, rows: draws.Rows) -> torch.Tensor:
        """What D sees of any image, real or generated (differentiable; identity without augmentation)."""
        return images if self.augment_pipe is None else self.augment_pipe(images, rows)

    def _sync_p(self) -> None:
        if self.augment_pipe is not None:
            self.augment_pipe.set_p(self.ada.p)

    # ------------------------------------------------------------------ one step

    def block(self, micro: int, per_rank: int) -> draws.Rows:
        """Where this rank's micro-batch `micro` of `per_rank` samples sits in the step's global
        batch: the data sampler's order, (micro, rank, sample)."""
        ranks = self.env.world_size
        return draws.Rows((micro * ranks + self.env.rank) * per_rank, self.accumulation * ranks * per_rank)

    def keyed(self, step: int, stream: str):
        """The random generators of one pass of a step (`draws.keyed`), re-entered per micro-batch."""
        return draws.keyed(self.cfg.seed, step, stream, self.env.device)

    def latents(self, n: int, rows: draws.Rows) -> torch.Tensor:
        return draws.randn((n, self.model_cfg.z_dim), self.env.device, rows)

    def mixing(self, n: int, rows: draws.Rows) -> dict:
        """Style-mixing arguments for one generator call: second latents and per-sample cutoffs."""
        cutoffs = losses.style_mixing_cutoffs(self.num_ws, self.cfg.style_mixing, n, self.env.device, rows)
        return {"mix_z": self.latents(n, rows), "mix_cutoff": cutoffs}

    def path_length_inputs(self, rows: draws.Rows) -> dict[str, torch.Tensor]:
        """Tensors of one path-length pass over a shrunk micro-batch: latents, style-mixing
        cutoffs, the running mean path length and the batch's first row (all device tensors: a
        CUDA graph takes them as inputs)."""
        n = self.pl_batch
        return {"z": self.latents(n, rows), **self.mixing(n, rows), "pl_mean": self.pl_mean,
                "first_row": torch.full((), rows.start, dtype=torch.long, device=self.env.device)}

    @property
    def pl_batch(self) -> int:
        return max(1, self.cfg.batch_per_gpu // self.cfg.pl_batch_shrink)

    def generator_phase(self, step: int, stage: int, fade: float, regularize: bool) -> dict:
        cfg, batch = self.cfg, self.cfg.batch_per_gpu
        logs: dict[str, torch.Tensor] = {}
        injected = None
        if regularize:                  # over every micro-batch, as the losses: the same samples on any split
            mean, outs = PassMean(self.accumulation), []
            regulariser = path_length_regulariser(cfg, stage, fade, self.block(0, self.pl_batch).total)
            key = regulariser_graph_key(stage, self.g.module.stages, fade, self.pl_batch)
            for micro in range(self.accumulation):
                with self.keyed(step, "path-length"):
                    inputs = self.path_length_inputs(self.block(micro, self.pl_batch))
                    outs.append(mean.add(*self.g.regulariser_grads(regulariser, inputs, key)))
            injected = mean.result()
            step_mean = _mean_over_ranks(torch.stack([o["length_mean"] for o in outs]).mean(), self.env)
            self.pl_mean = losses.updated_path_length_mean(self.pl_mean, step_mean, cfg.pl_decay)
            logs["pl_penalty"] = torch.stack([o["penalty"] for o in outs]).mean()
        w_sum = torch.zeros(self.model_cfg.w_dim, device=self.env.device)
        with self.d.frozen() as d_fn:
            for micro in range(self.accumulation):
                rows = self.block(micro, batch)
                with self.keyed(step, "generator"):
                    out = self.g(self.latents(batch, rows), stage=stage, fade=fade,
                                 nerf_path_pixels=cfg.nerf_path_pixels, rows=rows, **self.mixing(batch, rows))
                    logits = d_fn(self.augment(out.img, rows), fade=fade)
                gan = losses.generator_loss(logits)
                loss = gan + cfg.nerf_path_weight * out.nerf_path_loss if out.nerf_path_loss is not None else gan
                self.g.backward(loss, injected)
                injected = None
                w_sum += out.ws[:, 0].detach().float().mean(0) / self.accumulation
                logs["loss_g"] = logs.get("loss_g", 0) + gan.detach() / self.accumulation
                if out.nerf_path_loss is not None:
                    logs["nerf_path"] = logs.get("nerf_path", 0) + out.nerf_path_loss.detach() / self.accumulation
        _log_non_finite(logs, "g", self.g.step())
        self._update_ema(_mean_over_ranks(w_sum, self.env))
        return logs

    def discriminator_phase(self, step: int, reals: list[torch.Tensor], stage: int, fade: float,
                            regularize: bool) -> dict:
        cfg = self.cfg
        logs: dict[str, torch.Tensor] = {}
        injected = None
        if regularize:                  # over every micro-batch, as the losses
            mean, outs = PassMean(self.accumulation), []
            for micro, real in enumerate(reals):
                with self.keyed(step, "r1"):
                    inputs = {"real": self.augment(real, self.block(micro, real.shape[0]))}
                key = regulariser_graph_key(stage, self.g.module.stages, fade, real.shape[0])
                outs.append(mean.add(*self.d.regulariser_grads(r1_regulariser(cfg, fade), inputs, key)))
            injected = mean.result()
            logs["r1_penalty"] = torch.stack([o["penalty"] for o in outs]).mean()
        with self.g.frozen() as g_fn:
            for micro, real in enumerate(reals):
                rows = self.block(micro, real.shape[0])
                with self.keyed(step, "discriminator"):
                    with torch.no_grad():
                        fake = g_fn(self.latents(real.shape[0], rows), stage=stage, fade=fade, rows=rows,
                                    **self.mixing(real.shape[0], rows)).img
                    seen = self.augment(torch.cat([fake, real]), rows.stacked(2))
                logits = self.d(seen, fade=fade)
                fake_logits, real_logits = logits.split(real.shape[0])
                self.ada.accumulate(real_logits)
                loss = losses.discriminator_loss(fake_logits, real_logits)
                self.d.backward(loss, injected)
                injected = None
                logs["loss_d"] = logs.get("loss_d", 0) + loss.detach() / self.accumulation
                logs["score_real"] = logs.get("score_real", 0) + real_logits.detach().mean() / self.accumulation
                logs["score_fake"] = logs.get("score_fake", 0) + fake_logits.detach().mean() / self.accumulation
                # ADA's overfitting heuristic r_t = E[sign(D(real))], logged whatever the augmentation
                logs["rt"] = logs.get("rt", 0) + real_logits.detach().sign().mean() / self.accumulation
        _log_non_finite(logs, "d", self.d.step())
        return logs

    @torch.no_grad()
    def _update_ema(self, w_mean: torch.Tensor) -> None:
        names, ema = zip(*self.g_ema.named_parameters())
        with self.g.gathered() as tensors:
            torch._foreach_lerp_(list(ema), [tensors[n].float() for n in names], 1 - self.ema_beta)
        self.g_ema.w_avg.lerp_(w_mean, 1 - W_AVG_BETA)

    def save_progress(self, run: RunState) -> None:
        """Put device-side counters into the progress dict (before a checkpoint)."""
        run.progress["pl_mean"] = float(self.pl_mean)
        run.progress["ada"] = self.ada.state()

    def load_progress(self, run: RunState) -> None:
        """Take device-side counters from a restored progress dict."""
        self.pl_mean = torch.tensor(run.progress["pl_mean"], device=self.env.device)
        self.ada.load(run.progress.get("ada"))
        self._sync_p()

    def step(self, batch_iter, run: RunState) -> dict:
        """One optimizer step of G and D at the current point of the curriculum; returns its numbers
        (device tensors and plain floats)."""
        cfg, step = self.cfg, run.progress["step"]
        stage, fade = growth(run.progress["images"] / 1000, cfg.curriculum_kimg, self.g.module.stages)
        resolution = self.model_cfg.nerf_resolution * 2 ** stage
        reals = [resize_images(image_data.to_training(next(batch_iter), self.env.device), resolution)
                 for _ in range(self.accumulation)]
        logs = self.generator_phase(step, stage, fade,
                                    bool(cfg.pl_every and cfg.pl_weight and step % cfg.pl_every == 0))
        logs.update(self.discriminator_phase(step, reals, stage, fade,
                                             bool(cfg.r1_every and cfg.r1_gamma and step % cfg.r1_every == 0)))
        run.progress["step"] = step + 1
        run.progress["images"] += cfg.batch_total
        if self.ada.adapts:
            self.ada.maybe_update(step + 1, cfg.batch_total * cfg.ada_interval,
                                  torch.distributed.all_reduce if self.env.is_distributed else None)
            self._sync_p()
        if self.augment_pipe is not None:
            logs["augment_p"] = self.ada.p
        logs["resolution"] = float(resolution)
        logs["fade"] = float(fade)
        return logs

    # ------------------------------------------------------------------ outputs

    def checkpoint_state(self, run: RunState) -> dict:
        return {**self.g.checkpoint_state(), **self.d.checkpoint_state(),
                "G_ema": checkpoint.ModuleState(self.g_ema), "rng": checkpoint.RNGState(), "progress": run.progress}

    def sample(self, z: torch.Tensor, angles: torch.Tensor | None = None, stage: int | None = None,
               fade: float = 1.0) -> torch.Tensor:
        """Images of the EMA generator (deterministic ray samples) in [-1, 1], a training batch at a time."""
        chunk = self.cfg.batch_per_gpu
        with torch.no_grad():
            return torch.cat([self.g_ema(z[i:i + chunk], angles=None if angles is None else angles[i:i + chunk],
                                         stage=stage, fade=fade, randomize=False).img
                              for i in range(0, z.shape[0], chunk)])

    def digests(self) -> dict[str, str]:
        """sha256 of each network's full state, for bitwise comparison of runs."""
        out = {}
        for name, trainable in (("G", self.g), ("D", self.d)):
            with trainable.gathered() as tensors:
                out[name] = tensor_digest(tensors)
        out["G_ema"] = tensor_digest(dict(self.g_ema.state_dict()))
        return out


def _load_initial_weights(path: str, modules: dict[str, torch.nn.Module]) -> None:
    """Start from a safetensors file holding `G.*`, `D.*` and `G_ema.*` (e.g. converted official weights)."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    for name, module in modules.items():
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state and name == "G_ema":
            state = {k[2:]: v for k, v in tensors.items() if k.startswith("G.")}
        module.load_state_dict(state, strict=True)


def path_length_regulariser(cfg: TrainConfig, stage: int, fade: float, total: int) -> Regulariser:
    """The lazy path-length term (weighted for its interval) on inputs from `path_length_inputs`,
    their samples' draws cut from a global batch of `total`; it also returns the unweighted
    penalty and the pass's mean length."""
    def path_length(g_fn, x: dict) -> tuple[torch.Tensor, dict]:
        rows = draws.Rows(x["first_row"], total)
        lengths = losses.path_lengths(lambda: g_fn(x["z"], mix_z=x["mix_z"], mix_cutoff=x["mix_cutoff"],
                                                   stage=stage, fade=fade, rows=rows), rows)
        penalty = losses.path_length_penalty(lengths, x["pl_mean"])
        return penalty * (cfg.pl_weight * cfg.pl_every), {"penalty": penalty, "length_mean": lengths.detach().mean()}

    return path_length


def r1_regulariser(cfg: TrainConfig, fade: float) -> Regulariser:
    """The lazy R1 term (gamma / 2, weighted for its interval) at the real images `x["real"]`."""
    def r1(d_fn, x: dict) -> tuple[torch.Tensor, dict]:
        penalty = losses.r1_penalty(d_fn, x["real"], fade=fade)
        return penalty * (cfg.r1_gamma / 2 * cfg.r1_every), {"penalty": penalty}

    return r1


def regulariser_graph_key(stage: int, stages: int, fade: float, batch: int) -> tuple | None:
    """What a regulariser's CUDA graph fixes besides its input tensors, at full resolution; None
    (run eagerly, no graph kept) while growing, where the resolution and fade keep changing."""
    return (stage, batch) if stage == stages and fade == 1.0 else None


class PassMean:
    """The mean of a regulariser's weight gradients over a step's passes (one per micro-batch).

    With one pass its gradients are used as they are (a CUDA graph's buffers, valid until the
    graph replays next: after the step); with more, the first is copied and the others added to
    it before the next replay overwrites them. `add` returns the pass's outputs, copied.
    """

    def __init__(self, passes: int):
        self.passes, self.total = passes, None

    def add(self, grads: list[torch.Tensor], outputs: dict) -> dict:
        if self.total is None:
            self.total = grads if self.passes == 1 else [g.clone() for g in grads]
        else:
            torch._foreach_add_(self.total, grads)
        return {k: v.clone() for k, v in outputs.items()}

    def result(self) -> list[torch.Tensor]:
        if self.passes > 1:
            torch._foreach_div_(self.total, self.passes)
        return self.total


def _mean_over_ranks(value: torch.Tensor, env: distributed.DistEnv) -> torch.Tensor:
    if env.is_distributed:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= env.world_size
    return value


def _log_non_finite(logs: dict, network: str, zeroed: torch.Tensor | None) -> None:
    """`nonfinite_grads_<network>`: 1 for a step whose gradient was non-finite and zeroed (a
    tick's metric is the fraction of its steps); engines that skip such steps report none."""
    if zeroed is not None:
        logs[f"nonfinite_grads_{network}"] = zeroed


def cudnn_benchmark(precision: str) -> bool:
    """cuDNN's autotuner picks the fastest convolution per shape (fixed per resolution), but in
    fp32/fp16 it tries algorithms with huge workspaces: on the H100 the whole-run peak was 19.6
    GiB instead of 3.5 (paper256 fp32) and 75 GiB instead of 15.4 (paper1024 fp16, the V100
    default). In bf16 the peak stayed 8.8 GiB at 1024 px, so only bf16 autotunes."""
    return precision == "bf16"


def _compile_blocks(generator: Generator, discriminator: Discriminator) -> None:
    """torch.compile the hot blocks in place (names and checkpoints unchanged). Static shapes: a
    step sees only a few batch sizes, and inductor's dynamic-shape path fails on these blocks
    (torch 2.13: "cannot determine truth value of Relational"). Blocks of one class share a code
    object, so dynamo's per-code cache must hold every (block, batch size) pair: 8 is too few."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)  # 2.7+: recompile_limit
    blocks = [generator.foreground, generator.background, *generator.upsampler.blocks,
              *discriminator.blocks.values()]
    for block in blocks:
        block.compile(dynamic=False)


def compile_cache_key(cfg: TrainConfig) -> dict:
    """What decides the compiled blocks' code: a resume that changes only schedules or lengths
    (max_steps, learning rates) reuses the first attempt's kernels."""
    return {"model": asdict(cfg.model_config), "precision": cfg.precision, "batch_per_gpu": cfg.batch_per_gpu,
            "engine": cfg.engine, "zero_stage": cfg.zero_stage, "cuda_graphs": cfg.cuda_graphs,
            "channels_last": cfg.channels_last, "activation_checkpointing": cfg.activation_checkpointing}


def _compiled_blocks_follow_swapped_weights() -> bool:
    """Whether a compiled block reads the weights `functional_call` swaps in at each call. Before
    torch 2.5 dynamo did not inline module calls by default and kept the tensors it first saw
    (pytorch/pytorch#97909): the frozen replicas would run on stale weights under ZeRO-3."""
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()     # "2.5.0a0+git..." is 2.5
    return (int(major), int(minor)) >= (2, 5)


# ---------------------------------------------------------------------- monitoring


class Monitor:
    """Progress lines, metrics.jsonl/TensorBoard scalars, image grids and metric evaluations (rank 0 writes)."""

    def __init__(self, ctx: TaskContext, env: distributed.DistEnv, training: StyleNeRFTraining, dataset,
                 total_steps: int, metrics: MetricsWriter):
        self.ctx, self.env, self.training, self.total_steps = ctx, env, training, total_steps
        cfg = training.cfg
        self.metrics = metrics
        self.suite = MetricSuite(cfg.metrics, dataset, cfg.metric_images, cfg.batch_per_gpu, env.rank,
                                 env.world_size, env.device, cfg.inception_path())
        self.window = Window()
        self.tick_start = time.time()
        self.tick_images = 0
        self.step_times: list[float] = []
        self.board = None
        self.wandb = _wandb_run(ctx, cfg) if env.is_main and cfg.wandb else None
        grid = torch.Generator().manual_seed(cfg.seed + 7)
        self.grid_z = torch.randn(cfg.grid_seeds, training.model_cfg.z_dim, generator=grid).to(env.device)
        yaw = torch.linspace(-1, 1, cfg.grid_seeds) * training.model_cfg.yaw_std
        self.grid_angles = torch.stack([yaw, torch.zeros_like(yaw)], 1).to(env.device)

    def record(self, logs: dict, images: int) -> None:
        """Add a step's numbers; device tensors stay on the device (no synchronisation until the tick)."""
        self.window.add(logs)
        self.tick_images += images

    def tick(self, run: RunState) -> None:
        """Averages since the last tick to stdout, metrics.jsonl and TensorBoard."""
        if not self.window.steps:
            return
        cfg, progress = self.training.cfg, run.progress
        now = time.time()
        seconds = now - self.tick_start
        remaining = (self.total_steps - progress["step"]) * seconds / self.window.steps
        scalars = distributed.means_over_ranks(self.window.mean(), self.env, RANK_MEANS)
        kimg = progress["images"] / 1000
        sec_per_kimg = seconds / max(self.tick_images / 1000, 1e-9)
        scalars.update(kimg=kimg, tick=progress["tick"], sec_per_kimg=sec_per_kimg,
                       images_per_s=self.tick_images / max(seconds, 1e-9), lr_g=cfg.lr_g, lr_d=cfg.lr_d,
                       loss_scale_g=self.training.g.loss_scale, loss_scale_d=self.training.d.loss_scale)
        if self.env.device.type == "cuda":
            scalars["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.env.device) / 2 ** 30
        self.metrics.log(progress["step"], items=self.tick_images, **scalars)
        if self.wandb is not None:
            self.wandb.log(scalars, step=progress["step"])
        if self.env.is_main:
            memory = f" mem {scalars['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in scalars else ""
            augment = f" aug p {scalars['augment_p']:.3f}" if "augment_p" in scalars else ""
            zeroed = "".join(f" non-finite grads {net.upper()} {scalars[key]:.0%}" for net in "gd"
                             if scalars.get(key := f"nonfinite_grads_{net}", 0) > 0)
            print(f"tick {progress['tick']:<5d} kimg {kimg:<8.2f} step {progress['step']:<7d} "
                  f"res {int(scalars.get('resolution', 0))} | {sec_per_kimg:7.1f} s/kimg "
                  f"{scalars['images_per_s']:7.1f} img/s | G {scalars.get('loss_g', 0):.3f} "
                  f"D {scalars.get('loss_d', 0):.3f} r_t {scalars.get('rt', 0):.2f}{augment} "
                  f"r1 {scalars.get('r1_penalty', 0):.4f} "
                  f"pl {scalars.get('pl_penalty', 0):.4f} nerf {scalars.get('nerf_path', 0):.4f}{zeroed}{memory} "
                  f"| ETA {_duration(remaining)}", flush=True)
        self.tick_images, self.tick_start = 0, now

    def snapshot(self, run: RunState) -> dict[str, float]:
        """Image grid of the fixed seeds and the metrics; no effect on the training random streams."""
        devices = [self.env.device] if self.env.device.type == "cuda" else []
        step = run.progress["step"]
        stage, fade = growth(run.progress["images"] / 1000, self.training.cfg.curriculum_kimg,
                             self.training.g_ema.stages)
        with torch.random.fork_rng(devices=devices):
            grid = self.training.sample(self.grid_z, self.grid_angles, stage, fade)
            results = self.suite.evaluate(lambda z: self.training.sample(z, stage=stage, fade=fade),
                                          self.training.model_cfg.z_dim)
        if self.env.is_main:
            self._save_grid(grid, step)
            if results:
                print("metrics " + " ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
        if results:
            self.metrics.log(step, **results)
            if self.wandb is not None:
                self.wandb.log(results, step=step)
        self.tick_start = time.time()                # tick timings exclude snapshots
        return results

    def _save_grid(self, grid: torch.Tensor, step: int) -> None:
        canvas, png = grid_png(grid)
        write_bytes(self.ctx.samples_dir / f"fakes-{step:06d}.png", png)
        if self.board is None:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(log_dir=str(self.ctx.tensorboard_dir / "images"))
        self.board.add_image("fakes", canvas, step)
        self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
        if self.wandb is not None:
            self.wandb.finish()


def grid_png(images: torch.Tensor) -> tuple[torch.Tensor, bytes]:
    """Images in [-1, 1] tiled into a near-square grid: the uint8 canvas (3, H, W) and its PNG."""
    import io

    from PIL import Image

    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    n, _, h, w = images.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    canvas = torch.zeros(3, rows * h, cols * w, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    buffer = io.BytesIO()
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return canvas, buffer.getvalue()


def _wandb_run(ctx: TaskContext, cfg: TrainConfig):
    """Offline Weights & Biases logging when the package is installed (nothing is uploaded)."""
    try:
        import wandb
    except ImportError:
        print("wandb: not installed; W&B logging skipped", flush=True)
        return None
    return wandb.init(mode="offline", dir=str(ctx.stage_dir), name=f"{ctx.run_dir.name}-{ctx.stage}",
                      config={k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))})


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


# ---------------------------------------------------------------------- the task


@on_step_loop
def main(ctx: TaskContext) -> None:
    """Train until `kimg` (or `max_steps`) on the runtime's step loop: checkpoints, stops, resume."""
    cfg, env = startup.start(ctx, TrainConfig, "stylenerf.train")
    if any(m.startswith("fid") for m in cfg.metrics) and not Path(cfg.inception_path()).is_file():
        raise FileNotFoundError(f"FID needs the Inception weights {cfg.inception_path()} (python -m "
                                "nerffacespeech.pretrained fetch, or set inception_weights); nothing is downloaded")
    if cfg.compiles(env.device.type):
        compile_cache.use_run_cache(ctx.layout.compile_cache, env.device, compile_cache_key(cfg))
    training = StyleNeRFTraining(cfg, env)
    dataset = image_data.ImageDataset(cfg.data, training.model_cfg.resolution)
    run = RunState.fresh()
    total_steps = math.ceil(cfg.kimg * 1000 / cfg.batch_total)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    with StepLoop(ctx, env, training.checkpoint_state(run), seed=cfg.seed, total_steps=total_steps,
                  before_save=lambda: training.save_progress(run)) as loop:
        loop.restore()
        training.load_progress(run)
        run.progress["batch_total"] = cfg.batch_total      # what a resume on another world size keeps
        if env.is_main:
            print(f"stylenerf.train: preset {cfg.preset}, {training.sizes['G'] / 1e6:.2f}M G + "
                  f"{training.sizes['D'] / 1e6:.2f}M D parameters, engine {training.g.spec.label}, {training.precision}, "
                  f"{env.world_size} x {cfg.batch_per_gpu} x {training.accumulation} images/step, "
                  f"{len(dataset)} training images, from step {loop.step} to {total_steps}", flush=True)
        sampler = image_data.PositionSampler(len(dataset), env.rank, env.world_size, cfg.batch_per_gpu, cfg.seed,
                                             cfg.mirror, start_step=loop.step * training.accumulation)
        batch_iter = image_data.batches(dataset, sampler, cfg.workers, pin_memory=env.device.type == "cuda",
                                        worker_init=loop.stop.shield_child)
        monitor = Monitor(ctx, env, training, dataset, total_steps, loop.metrics)
        tick_images = cfg.tick_kimg * 1000
        try:
            if loop.step == 0:
                with loop.evaluating():
                    monitor.snapshot(run)
            for step in loop.steps():
                monitor.record(training.step(batch_iter, run), cfg.batch_total)
                if run.progress["images"] >= (run.progress["tick"] + 1) * tick_images or step == total_steps:
                    run.progress["tick"] += 1
                    monitor.tick(run)
                    if run.progress["tick"] % cfg.snapshot_ticks == 0 or step == total_steps:
                        with loop.evaluating():
                            monitor.snapshot(run)
            loop.finish(images=run.progress["images"], digests=training.digests())
        finally:
            monitor.close()


__all__ = ["main", "growth", "StyleNeRFTraining", "RunState", "path_length_regulariser", "r1_regulariser",
           "regulariser_graph_key"]

"""The `audio2nerf.train` task: the audio encoder + expression head and LipaintNet, trained through
the frozen StyleNeRF generator under the same engine as StyleNeRF (DeepSpeed ZeRO 0-3 or DDP).

Every `eval_every` steps (and at step 0) the held-out tail of every clip is evaluated: expression
L1, lip-landmark error (px at 224), a lip-sync proxy (correlation of the predicted mouth opening
with the audio energy envelope) and the photometric error of rendered frames; a grid of real vs
rendered held-out frames goes to samples/ and TensorBoard. Checkpoints, stop requests and resume
come from the step loop (launcher.runtime.loop); the data draw is a pure function of the step, so
resume is bitwise.
"""
from __future__ import annotations

import io
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from launcher.atomic import write_bytes
from launcher.heartbeat import on_step_loop
from launcher.runtime import checkpoint, distributed
from launcher.runtime.context import TaskContext
from launcher.runtime.loop import StepLoop, tensor_digest
from launcher.runtime.metrics import MetricsWriter, Window
from nerffacespeech.configs.audio2nerf import DEFAULT_GENERATOR_STAGE, TrainConfig
from nerffacespeech.configs.stylenerf import support_problems
from nerffacespeech.models.audio2nerf import generator_source
from nerffacespeech.models.audio2nerf.deform import RayDeformation
from nerffacespeech.models.audio2nerf.face import load_face_basis
from nerffacespeech.models.audio2nerf.network import Audio2NeRF, parameter_counts
from nerffacespeech.models.audio2nerf.talking_head import EXPORT, PROGRESS
from nerffacespeech.pretrained.manifest import default_root

from . import startup
from .a2n_augment import MelAugment
from .a2n_data import TalkingData, micro_batch_generators
from .a2n_evaluate import evaluate
from .a2n_objective import Objective, Renderer, Weights
from .engine import EngineSpec, make_trainable, resolve_precision


def paths(cfg: TrainConfig, ctx: TaskContext) -> tuple[Path, str]:
    """The processed data folder and the generator spec, defaulting to this run's earlier stages."""
    data = Path(cfg.data) if cfg.data else ctx.run_layout.processed_data
    generator = cfg.generator or str(ctx.run_layout.stage(DEFAULT_GENERATOR_STAGE).checkpoints)
    return data, generator


def pretrained_root() -> Path:
    return default_root().resolve()


class Audio2NeRFTraining:
    """Data, frozen renderer, the objective under its engine, and the exported networks."""

    def __init__(self, cfg: TrainConfig, env: distributed.DistEnv, data_dir: Path, generator_spec: str):
        self.cfg, self.env = cfg, env
        self.precision = resolve_precision(cfg.precision, env.device)
        problems = support_problems(cfg.engine, cfg.zero_stage, self.precision, env.device.type)
        if problems:
            raise ValueError("; ".join(f"{f}: {m}" for f, m in problems))
        self.source = generator_source.describe(generator_spec, cfg.generator_preset, cfg.seed)
        generator = generator_source.build(self.source, env.device)
        if generator.cfg.w_dim != cfg.nerf_dim:
            raise ValueError(f"nerf_dim {cfg.nerf_dim} must equal the generator's w_dim {generator.cfg.w_dim} "
                             f"(preset {self.source['preset']})")
        self.data = TalkingData(data_dir, generator.cfg.resolution, cfg.holdout)
        face = load_face_basis(self.data.face_model, pretrained_root())
        self.renderer = Renderer(generator, RayDeformation(face, cfg.deform_sigma, cfg.deform_vertices).to(env.device),
                                 face.to(env.device))
        self.accumulation = cfg.accumulation(env.world_size)
        self.weights = Weights.of(cfg)
        self.augment = MelAugment(cfg.augment_gain_db, cfg.augment_noise, cfg.augment_freq_mask)
        n_clips, w_dim = len(self.data.clips), generator.cfg.w_dim
        factory = lambda: Objective(cfg.model, n_clips, w_dim, cfg.latent_lr_mult)
        torch.manual_seed(cfg.seed)                          # identical initial weights on every rank
        objective = factory()
        objective.w_init.copy_(generator.w_avg)
        if cfg.init_from:
            _load_initial_weights(cfg.init_from, objective)
        if cfg.sadtalker:
            from nerffacespeech.pretrained.sadtalker import init_audio_encoder

            report = init_audio_encoder(objective.net.audio_encoder, cfg.sadtalker, target_prefix="blocks.")
            if env.is_main:
                print(f"audio encoder from SadTalker audio2exp: {len(report.mapped)} tensors", flush=True)
        self.sizes = parameter_counts(objective.net)
        self.export = Audio2NeRF(cfg.model).to(env.device).eval().requires_grad_(False)
        spec = EngineSpec(cfg.engine, cfg.zero_stage, self.precision, cfg.lr,
                          tuple(cfg.betas), cfg.eps, cfg.batch_per_gpu, self.accumulation,
                          find_unused_parameters=cfg.render_batch == 0)
        self.objective = make_trainable("A2N", objective, factory, spec, env)
        self.sync_export()

    def step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimizer step over `accumulation` micro-batches; returns the mean losses."""
        sums: dict[str, torch.Tensor] = {}
        cfg, env = self.cfg, self.env
        for micro in range(self.accumulation):
            generators = micro_batch_generators(cfg.seed, step, micro, env.rank, env.world_size, cfg.batch_per_gpu)
            batch = self.data.train_batch(generators, cfg.seq_len, self.augment)
            batch = {k: v.to(env.device) for k, v in batch.items()}
            loss, logs = self.objective(batch, self.renderer, self.weights)
            self.objective.backward(loss)
            for k, v in {"loss": loss, **logs}.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / self.accumulation
        zeroed = self.objective.step()
        if zeroed is not None:          # 1 when this step's gradient was non-finite and zeroed (engine.step)
            sums["nonfinite_grads"] = zeroed
        return sums

    def sync_export(self) -> None:
        """Copy the trained networks (gathered under ZeRO-3) into the plain exported module."""
        with self.objective.gathered() as tensors:
            state = {k[len("net."):]: v.detach().float() for k, v in tensors.items() if k.startswith("net.")}
            self.export.load_state_dict(state, strict=True)
            self.latents = (tensors["w_init"].float() + self.cfg.latent_lr_mult * tensors["latents"].float()).clone()

    def checkpoint_state(self, progress: dict) -> dict:
        return {**self.objective.checkpoint_state(), EXPORT: checkpoint.ModuleState(self.export),
                "rng": checkpoint.RNGState(), PROGRESS: progress}

    def digest(self) -> str:
        """sha256 of the trained state (gathered under ZeRO-3), for bitwise comparison of runs."""
        with self.objective.gathered() as tensors:
            return tensor_digest(tensors)


def _load_initial_weights(path: str, objective: torch.nn.Module) -> None:
    """Start from a trained objective's safetensors (`net.*`, `latents`, `w_init`): its networks and,
    where the data has as many clips, the clips' latents (else they start at the generator's mean)."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    latents = {k: tensors.pop(k) for k in ("latents", "w_init") if k in tensors}
    if latents.get("latents") is not None and latents["latents"].shape == objective.latents.shape:
        tensors.update(latents)
    elif latents.get("latents") is not None:
        logging.getLogger(__name__).warning(
            "init_from %s: its latents are for %d clips, this data has %d: the clips' latents start at "
            "the generator's mean (the networks load as usual)", path, len(latents["latents"]), len(objective.latents))
    missing, unexpected = objective.load_state_dict(tensors, strict=False)
    wrong = [k for k in missing if k.startswith("net.")] + unexpected
    if wrong:
        raise ValueError(f"init_from {path}: not an audio2nerf objective of this model size "
                         f"(missing or unexpected: {', '.join(wrong[:5])})")


@on_step_loop
def main(ctx: TaskContext) -> None:
    """Train `max_steps` steps on the runtime's step loop, evaluating on held-out clip tails."""
    cfg, env = startup.start(ctx, TrainConfig, "audio2nerf.train")
    data_dir, generator_spec = paths(cfg, ctx)
    training = Audio2NeRFTraining(cfg, env, data_dir, generator_spec)
    progress = {"step": 0, "evals": [], "model": asdict(cfg.model), "generator": training.source,
                "face_model": training.data.face_model, "neutral": training.data.neutral.tolist(),
                "neutral_blink": training.data.neutral_blink, "pretrained_root": str(pretrained_root())}
    board = None
    with StepLoop(ctx, env, training.checkpoint_state(progress), seed=cfg.seed, total_steps=cfg.max_steps,
                  before_save=training.sync_export) as loop:
        start = loop.restore()
        progress["batch_total"] = cfg.batch_total           # what a resume on another world size keeps
        if env.is_main:
            print(f"audio2nerf.train: {training.sizes['total'] / 1e6:.2f}M parameters {training.sizes}, generator "
                  f"{training.source['kind']} ({training.source['preset']}), {len(training.data.clips)} clips, "
                  f"engine {training.objective.spec.label}, {training.precision}, {env.world_size} x "
                  f"{cfg.batch_per_gpu} x {training.accumulation} sequences of {cfg.seq_len}, from step {start} to "
                  f"{cfg.max_steps}", flush=True)
        try:
            if start == 0:
                with loop.evaluating():
                    board = _evaluate(ctx, env, training, progress, loop.metrics, board)
            window = Window()
            for step in loop.steps():
                window.add(training.step(step - 1))
                progress["step"] = step
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    _log(env, loop.metrics, step, window, cfg.batch_total)
                if step % cfg.eval_every == 0 or step == cfg.max_steps:
                    training.sync_export()
                    with loop.evaluating():
                        board = _evaluate(ctx, env, training, progress, loop.metrics, board)
            loop.finish(digest=training.digest(), evals=progress["evals"])
        finally:
            if board is not None:
                board.close()


def _log(env: distributed.DistEnv, metrics: MetricsWriter, step: int, window: Window, batch_total: int) -> None:
    """The mean losses since the last line, over every rank (and the peak GPU memory) to
    metrics.jsonl and stdout."""
    steps = window.steps
    scalars = distributed.means_over_ranks(window.mean(), env)      # each rank's share of the sequences
    if env.device.type == "cuda":
        scalars["peak_memory_gib"] = torch.cuda.max_memory_allocated(env.device) / 2 ** 30
    metrics.log(step, items=steps * batch_total, **scalars)
    if env.is_main:
        print(f"step {step:<6d} " + " ".join(f"{k} {v:.4f}" for k, v in scalars.items()), flush=True)


def _evaluate(ctx, env, training: Audio2NeRFTraining, progress: dict, metrics: MetricsWriter, board):
    """Held-out metrics (all ranks compute the same; rank 0 writes) and a grid of rendered frames."""
    devices = [env.device] if env.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        results, grid = evaluate(training.export, training.latents, training.data, training.renderer)
    step = progress["step"]
    progress["evals"].append({"step": step, **results})
    metrics.log(step, **{f"heldout/{k}": v for k, v in results.items()})
    if env.is_main:
        print(f"eval step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        write_bytes(ctx.samples_dir / f"heldout-{step:06d}.png", buffer.getvalue())
        if board is None:
            from torch.utils.tensorboard import SummaryWriter

            board = SummaryWriter(log_dir=str(ctx.tensorboard_dir / "images"))
        board.add_image("heldout_real_vs_rendered", grid, step)
        board.flush()
    return board


__all__ = ["main", "Audio2NeRFTraining"]

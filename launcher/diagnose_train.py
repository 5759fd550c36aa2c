"""`diagnose.train`: a tiny deterministic training task on `launcher.runtime.loop`, to check a
cluster's checkpoints, stops and resumes end to end (the chaos tests and benchmarks train it).

An MLP with dropout learns a seeded regression under DDP or DeepSpeed ZeRO; every step draws
from Python's, NumPy's and torch's generators and the data position is checkpointed, so a
resumed run ends bitwise equal to an uninterrupted one (`final.json`'s digest).
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from launcher.runtime import checkpoint, distributed
from launcher.runtime.context import TaskContext
from launcher.runtime.loop import StepLoop, tensor_digest


@dataclass(frozen=True)
class ToyConfig:
    engine: str = "ddp"                 # ddp | deepspeed
    zero_stage: int = 2                 # DeepSpeed only
    steps: int = 40
    seed: int = 0
    width: int = 32
    depth: int = 2                      # hidden Linear layers of width x width
    batch_size: int = 8                 # per rank
    samples: int = 512
    lr: float = 1e-3
    dropout: float = 0.1
    sleep_per_step: float = 0.0         # seconds, so a test can interrupt mid-run
    checkpoint_pause: float = 0.0       # seconds each checkpoint write lingers (kill-during-write tests)
    threads: int = 1
    hang_rank: int = -1                 # this rank stops moving at `hang_at_step` of the first attempt
    hang_at_step: int = 0               # (hang-detection tests: the others wait in the next collective)
    slow_rank: int = -1                 # this rank sleeps `slow_seconds` more per step (slow but alive)
    slow_seconds: float = 0.0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "ToyConfig":
        unknown = sorted(set(config) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown toy config keys {unknown}; known: {sorted(f.name for f in fields(cls))}")
        cfg = cls(**config)
        if cfg.engine not in ("ddp", "deepspeed") or cfg.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine must be 'ddp' or 'deepspeed' and zero_stage 0-3, got {cfg.engine!r}, "
                             f"{cfg.zero_stage}")
        return cfg


def main(ctx: TaskContext) -> None:
    """Train `steps` steps of the toy model on the runtime's step loop."""
    cfg = ToyConfig.from_dict(ctx.config)
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # deterministic cuBLAS needs it
    torch.use_deterministic_algorithms(True)
    env = distributed.init(ctx.device)
    try:
        engine = (DeepSpeedEngine if cfg.engine == "deepspeed" else DDPEngine)(cfg, build_model(cfg), env)
        inputs, targets = make_dataset(cfg)
        progress = {"epoch": 0, "batch": 0}
        state = {**engine.state, "rng": checkpoint.RNGState(), "progress": progress}
        if cfg.checkpoint_pause > 0:
            state["pause"] = SlowWrite(cfg.checkpoint_pause)
        with StepLoop(ctx, env, state, seed=cfg.seed, total_steps=cfg.steps) as loop:
            loop.restore()
            for step in loop.steps():
                index = batch_indices(cfg, env, progress)
                loss = engine.train_step(jitter(inputs[index]).to(env.device), targets[index].to(env.device))
                loop.metrics.log(step, items=cfg.batch_size * env.world_size, loss=loss)
                time.sleep(cfg.sleep_per_step + (cfg.slow_seconds if env.rank == cfg.slow_rank else 0.0))
                if env.rank == cfg.hang_rank and step == cfg.hang_at_step and ctx.attempt == 0:
                    freeze()
            loop.finish(digest=tensor_digest(dict(engine.full_parameters())))
    finally:
        distributed.shutdown()       # an undestroyed gloo group can abort the process at exit


def freeze() -> None:
    """Never return, as a rank stuck in a driver call or a lost collective would."""
    while True:
        time.sleep(3600)


def build_model(cfg: ToyConfig) -> torch.nn.Module:
    """The MLP, initialised from `cfg.seed` so every rank starts identical."""
    torch.manual_seed(cfg.seed)
    layers: list[torch.nn.Module] = [torch.nn.Linear(16, cfg.width), torch.nn.GELU()]
    for _ in range(cfg.depth):
        layers += [torch.nn.Linear(cfg.width, cfg.width), torch.nn.GELU(), torch.nn.Dropout(cfg.dropout)]
    return torch.nn.Sequential(*layers, torch.nn.Linear(cfg.width, 1))


def make_dataset(cfg: ToyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of a fixed random nonlinear function, the same on every rank."""
    generator = torch.Generator().manual_seed(cfg.seed + 12345)
    inputs = torch.randn(cfg.samples, 16, generator=generator)
    weights = torch.randn(16, 1, generator=generator)
    return inputs, torch.sin(inputs @ weights) + 0.1 * torch.randn(cfg.samples, 1, generator=generator)


def batch_indices(cfg: ToyConfig, env: distributed.DistEnv, progress: dict) -> list[int]:
    """This rank's sample indices at the position in `progress`, then advance the position."""
    sampler = torch.utils.data.DistributedSampler(
        range(cfg.samples), num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed,
        drop_last=True)
    sampler.set_epoch(progress["epoch"])
    start = progress["batch"] * cfg.batch_size
    progress["batch"] += 1
    if progress["batch"] == len(sampler) // cfg.batch_size:
        progress.update(epoch=progress["epoch"] + 1, batch=0)
    return list(sampler)[start:start + cfg.batch_size]


def jitter(inputs: torch.Tensor) -> torch.Tensor:
    """Noise from NumPy scaled by a factor from Python's `random`: exercises both generators."""
    noise = torch.from_numpy(np.random.normal(0.0, 0.01, size=tuple(inputs.shape)).astype(np.float32))
    return inputs + noise * random.uniform(0.5, 1.5)


class DDPEngine:
    def __init__(self, cfg: ToyConfig, model: torch.nn.Module, env: distributed.DistEnv):
        device_ids = [env.device] if env.device.type == "cuda" else None
        self.model = torch.nn.parallel.DistributedDataParallel(model.to(env.device), device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr)
        self.state = {"model": checkpoint.ModuleState(self.model),
                      "optim": checkpoint.OptimizerState(self.optimizer)}

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.model(inputs), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def full_parameters(self):
        yield from self.model.module.state_dict().items()


class DeepSpeedEngine:
    def __init__(self, cfg: ToyConfig, model: torch.nn.Module, env: distributed.DistEnv):
        import deepspeed

        config = {"train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": cfg.zero_stage}, "steps_per_print": 10 ** 9,
                  "zero_allow_untested_optimizer": True}     # a client AdamW: no fused_adam JIT build
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.state = {"engine": checkpoint.DeepSpeedState(self.engine)}

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.engine(inputs), targets)
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach()

    def full_parameters(self):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
            for name, tensor in self.engine.module.state_dict().items():
                yield name, tensor.detach().clone()


class SlowWrite:
    """A state entry that writes nothing but takes `seconds`: widens the window for kill tests."""

    background_ok = True

    def __init__(self, seconds: float):
        self.seconds = seconds

    def snapshot(self, name: str, env: distributed.DistEnv, copy: bool) -> checkpoint.Writer:
        return lambda folder: time.sleep(self.seconds) or []

    def load(self, folder: Path, name: str, env: distributed.DistEnv) -> None:
        pass

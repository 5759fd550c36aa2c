"""`diagnose.train`: a tiny deterministic training task on `launcher.runtime.loop`, to check a
cluster's checkpoints, stops and resumes end to end (the chaos tests and benchmarks train it).

An MLP with dropout learns a seeded regression under DDP or DeepSpeed ZeRO; every step draws
from Python's, NumPy's and torch's generators and the data position is checkpointed, so a
resumed run ends bitwise equal to an uninterrupted one (`final.json`'s digest).

The samples of a step are a function of the step, not of the world size: the run's total batch
(`batch_size` x the first attempt's ranks) is kept in the checkpoint, and a resume on another
world size splits it anew (refused when the new world size does not divide it), continuing
from the same global sample index.
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

from launcher.heartbeat import on_step_loop
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
    batch_size: int = 8                 # per rank (of the first attempt: the total batch is kept)
    samples: int = 512
    lr: float = 1e-3
    dropout: float = 0.1
    jitter: float = 0.01                # input noise from the per-rank generators (0: none)
    sleep_per_step: float = 0.0         # seconds, so a test can interrupt mid-run
    checkpoint_pause: float = 0.0       # seconds each checkpoint write lingers (kill-during-write tests)
    threads: int = 1
    hang_rank: int = -1                 # this rank stops moving at `hang_at_step` of the first attempt
    hang_at_step: int = 0               # (hang-detection tests: the others wait in the next collective;
                                        # 0: before the process group, the others wait in the rendezvous)
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


@on_step_loop
def main(ctx: TaskContext) -> None:
    """Train `steps` steps of the toy model on the runtime's step loop."""
    cfg = ToyConfig.from_dict(ctx.config)
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # deterministic cuBLAS needs it
    torch.use_deterministic_algorithms(True)
    # that mode also fills every new tensor with NaN, a debugging aid: DeepSpeed ZeRO-1/2 allocates
    # its 5e8-element buckets at every step, which made a toy step 0.84 s instead of 8 ms
    torch.utils.deterministic.fill_uninitialized_memory = False
    if cfg.hang_at_step == 0 and int(os.environ.get("RANK", 0)) == cfg.hang_rank and ctx.attempt == 0:
        freeze()
    env = distributed.init(ctx.device)
    try:
        engine = (DeepSpeedEngine if cfg.engine == "deepspeed" else DDPEngine)(cfg, build_model(cfg), env)
        inputs, targets = make_dataset(cfg)
        progress = {"sample": 0, "total_batch": cfg.batch_size * env.world_size}
        state = {**engine.state, "rng": checkpoint.RNGState(), "progress": progress}
        if cfg.checkpoint_pause > 0:
            state["pause"] = SlowWrite(cfg.checkpoint_pause)
        with StepLoop(ctx, env, state, seed=cfg.seed, total_steps=cfg.steps) as loop:
            loop.restore()
            per_rank = rank_batch(progress["total_batch"], env.world_size)
            for step in loop.steps():
                index = batch_indices(cfg, env, progress)
                loss = engine.train_step(jitter(inputs[index], cfg.jitter).to(env.device),
                                         targets[index].to(env.device))
                loop.metrics.log(step, items=per_rank * env.world_size, loss=global_mean(loss, env))
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


class TotalBatchNotKept(ValueError):
    """The run's total batch cannot be split evenly over the ranks of this attempt."""


def rank_batch(total_batch: int, world_size: int) -> int:
    """Each rank's share of the run's total batch; refused when `world_size` does not divide it."""
    if total_batch % world_size:
        raise TotalBatchNotKept(
            f"the run's total batch of {total_batch} samples cannot be split evenly over {world_size} ranks, "
            f"so resuming on {world_size} ranks would change the training; resume on a world size that divides "
            f"{total_batch}")
    return total_batch // world_size


def batch_indices(cfg: ToyConfig, env: distributed.DistEnv, progress: dict) -> list[int]:
    """This rank's slice of the total batch at the global sample index in `progress`, then
    advance the index by the total batch. Each epoch is a seeded permutation cut to whole
    total batches, so which samples a step trains on does not depend on the world size."""
    total = progress["total_batch"]
    per_rank = rank_batch(total, env.world_size)
    epoch, offset = divmod(progress["sample"], cfg.samples - cfg.samples % total)
    order = torch.randperm(cfg.samples, generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
    progress["sample"] += total
    start = offset + env.rank * per_rank
    return order[start:start + per_rank]


def jitter(inputs: torch.Tensor, scale: float) -> torch.Tensor:
    """Noise from NumPy scaled by a factor from Python's `random`: exercises both generators."""
    noise = torch.from_numpy(np.random.normal(0.0, scale, size=tuple(inputs.shape)).astype(np.float32))
    return inputs + noise * random.uniform(0.5, 1.5)


def global_mean(value: torch.Tensor, env: distributed.DistEnv) -> torch.Tensor:
    """The mean of a per-rank scalar over the ranks (the loss of the total batch)."""
    if not env.is_distributed:
        return value
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total / env.world_size


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

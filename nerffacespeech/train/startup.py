"""How every training task starts: its config parsed, the process group joined, and the total
batch of a checkpoint written by another world size kept."""
from __future__ import annotations

import warnings
from typing import Any

import torch

from launcher.runtime import distributed
from launcher.runtime.context import TaskContext
from nerffacespeech.configs.kept_batch import kept_batch_total, recorded_batch


def start(ctx: TaskContext, config_cls: Any, task: str) -> tuple[Any, distributed.DistEnv]:
    """The config resolved for the world size and the distributed env.

    A bad config raises ValueError naming every problem (the launcher's validation normally
    caught it before submission); so does a resume whose total batch this world size cannot
    keep (`kept_batch_total`).
    """
    # DeepSpeed 0.19 calls collectives torch 2.13 renamed; one warning per call would flood the logs
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    parsed, problems = config_cls.parse(ctx.config)
    if parsed is None:
        raise ValueError(f"invalid {task} config: " + "; ".join(f"{f}: {m}" for f, m in problems))
    env = distributed.init(ctx.device)
    if parsed.threads:
        torch.set_num_threads(parsed.threads)
    resolved = parsed.resolved(env.world_size)
    cfg = kept_batch_total(parsed, resolved, recorded_batch(ctx.checkpoint_dir), env.world_size)
    if env.is_main and cfg.batch_total != resolved.batch_total:
        print(f"{task}: the checkpoint was written by another world size; its total batch of {cfg.batch_total} "
              f"is kept on {env.world_size} rank(s) as {cfg.batch_per_gpu} per rank x "
              f"{cfg.batch_total // (cfg.batch_per_gpu * env.world_size)} accumulated", flush=True)
    return cfg, env

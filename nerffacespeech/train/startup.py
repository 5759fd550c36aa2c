"""How every training task starts: its config parsed, the process group joined."""
from __future__ import annotations

import warnings
from typing import Any

import torch

from launcher.runtime import distributed
from launcher.runtime.context import TaskContext


def start(ctx: TaskContext, config_cls: Any, task: str) -> tuple[Any, distributed.DistEnv]:
    """The config resolved for the world size and the distributed env.

    A bad config raises ValueError naming every problem (the launcher's validation normally
    caught it before submission).
    """
    # DeepSpeed 0.19 calls collectives torch 2.13 renamed; one warning per call would flood the logs
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    parsed, problems = config_cls.parse(ctx.config)
    if parsed is None:
        raise ValueError(f"invalid {task} config: " + "; ".join(f"{f}: {m}" for f, m in problems))
    env = distributed.init(ctx.device)
    if parsed.threads:
        torch.set_num_threads(parsed.threads)
    return parsed.resolved(env.world_size), env

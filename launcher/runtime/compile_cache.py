"""torch.compile's on-disk caches in the run directory, so a resumed or restarted attempt reuses
the kernels the first attempt compiled instead of compiling them again.

Inductor keeps its FX-graph, AOTAutograd and Triton caches under TORCHINDUCTOR_CACHE_DIR (read at
each use; writes are atomic, so every rank of every node can share one folder on the shared
filesystem). The folder is keyed by what decides the compiled code (torch, CUDA and Python
versions, the device, the task's own key) so a changed config or torch version starts a new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch

ENV_VAR = "TORCHINDUCTOR_CACHE_DIR"


def cache_key(device: torch.device, task_key: dict) -> str:
    """16 hex digits naming the cache of one software stack, device kind and task setting."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    parts = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
             "device": device_name, "task": task_key}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def use_run_cache(root: Path, device: torch.device, task_key: dict) -> Path:
    """Point inductor's caches at `root/<key>/` (before the first compile) and return that folder."""
    folder = Path(root) / cache_key(device, task_key)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV_VAR] = str(folder)
    return folder

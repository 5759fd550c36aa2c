"""Who this process is in the job (rank, world, master) and a ready torch.distributed group.

The layout comes from torchrun's variables, else Slurm's, else a single process; reading it
is a pure function of an environ mapping, so it is testable without torch or a cluster.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Mapping, MutableMapping

from launcher import heartbeat

if TYPE_CHECKING:
    import torch

DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0     # without a plan (tools, tests): torch's own default
DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
SLURM_PORT_BASE = 20000          # Slurm jobs without MASTER_PORT: base + job id % SLURM_PORT_SPAN
SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class Layout:
    """Where this process sits in the job, as the launcher's variables describe it."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str = DEFAULT_MASTER_ADDR
    master_port: int = DEFAULT_MASTER_PORT
    source: str = "single"       # torchrun | slurm | single


@dataclass(frozen=True)
class DistEnv:
    """The layout plus the device this rank computes on and the process group's backend."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    source: str
    device: "torch.device"
    backend: str
    # Group for small CPU collectives (stop agreement, checkpoint coordination): gloo, so they
    # never wait for queued GPU work; its own group on CPU too, so CPU runs take the GPU path.
    # None for one process (no collectives) and for `single_process_env`.
    control_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def read_layout(environ: Mapping[str, str]) -> Layout:
    """The layout from torchrun (RANK, WORLD_SIZE, ...), else Slurm (SLURM_PROCID, ...), else one process.

    torchrun wins when both are present: its workers run inside a Slurm job step too.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return Layout(
            rank=int(environ["RANK"]),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
            world_size=int(environ["WORLD_SIZE"]),
            local_world_size=int(environ.get("LOCAL_WORLD_SIZE", environ["WORLD_SIZE"])),
            master_addr=environ.get("MASTER_ADDR", DEFAULT_MASTER_ADDR),
            master_port=int(environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)),
            source="torchrun",
        )
    if "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        return _slurm_layout(environ)
    return Layout()


def _slurm_layout(environ: Mapping[str, str]) -> Layout:
    if "MASTER_ADDR" in environ:
        master_addr = environ["MASTER_ADDR"]
    else:
        master_addr = first_host(environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST", ""))
    if "MASTER_PORT" in environ:
        master_port = int(environ["MASTER_PORT"])
    else:
        master_port = SLURM_PORT_BASE + int(environ.get("SLURM_JOB_ID", 0)) % SLURM_PORT_SPAN
    return Layout(
        rank=int(environ["SLURM_PROCID"]),
        local_rank=int(environ.get("SLURM_LOCALID", 0)),
        world_size=int(environ["SLURM_NTASKS"]),
        local_world_size=_slurm_tasks_on_this_node(environ),
        master_addr=master_addr or DEFAULT_MASTER_ADDR,
        master_port=master_port,
        source="slurm",
    )


def _slurm_tasks_on_this_node(environ: Mapping[str, str]) -> int:
    """Tasks on this node from SLURM_TASKS_PER_NODE ("2(x3),1") and SLURM_NODEID."""
    if "SLURM_NTASKS_PER_NODE" in environ:
        return int(environ["SLURM_NTASKS_PER_NODE"])
    per_node: list[int] = []
    for item in environ.get("SLURM_TASKS_PER_NODE", "").split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if match:
            per_node += [int(match.group(1))] * int(match.group(2) or 1)
    node = int(environ.get("SLURM_NODEID", 0))
    return per_node[node] if node < len(per_node) else int(environ["SLURM_NTASKS"])


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: "gpu[07-09,12],cpu1" -> "gpu07" (as `scontrol show hostnames`)."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    first = nodelist[:end].strip()
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], first)


def sanitized_cuda_arch_list(value: str) -> str:
    """TORCH_CUDA_ARCH_LIST without the arch-specific `a`/`f` suffixes ("9.0a" -> "9.0").

    DeepSpeed 0.19.8's op builder parses every entry with int() and fails on "9.0a"; the
    plain "9.0" builds the same sm_90 code for its ops.
    """
    tokens = []
    for token in value.replace(" ", ";").split(";"):
        token = re.sub(r"^(\d+\.\d+)[af](\+PTX)?$", r"\1\2", token.strip())
        if token and token not in tokens:
            tokens.append(token)
    return ";".join(tokens)


def prepare_deepspeed_environ(environ: MutableMapping[str, str]) -> None:
    """Rewrite variables DeepSpeed's JIT op builder cannot parse; call before it builds an op."""
    if environ.get("TORCH_CUDA_ARCH_LIST"):
        environ["TORCH_CUDA_ARCH_LIST"] = sanitized_cuda_arch_list(environ["TORCH_CUDA_ARCH_LIST"])


def resolve_device(device: str, local_rank: int) -> "torch.device":
    """`auto` is CUDA when available; CUDA means this rank's local GPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(device)


def collective_timeout_s(environ: Mapping[str, str]) -> float:
    """How long a collective may wait for its peers before it errors: the plan's
    NFS_COLLECTIVE_TIMEOUT_S (launcher.heartbeat.HangTimeouts.collective_s), else 30 minutes."""
    return float(environ.get(heartbeat.COLLECTIVE_TIMEOUT_VARIABLE) or DEFAULT_COLLECTIVE_TIMEOUT_S)


def init(device: str = "auto", timeout_s: float | None = None) -> DistEnv:
    """Join the job's process group (nccl on CUDA, gloo on CPU) and select this rank's device.

    Idempotent: a second call reuses the process group and its control group. The group exists
    for one process too, so collectives and `deepspeed.initialize` (which reuses it) work alike.
    With several ranks a gloo group for control messages is created once as well (collective:
    all ranks call init). Both groups' collectives error after `timeout_s` (default:
    `collective_timeout_s`), and on NCCL the async error handling (TORCH_NCCL_ASYNC_ERROR_HANDLING=1,
    unless set) aborts a rank whose collective timed out, so a dead peer cannot block forever.
    Under the launcher the rendezvous itself is watched (`heartbeat.watched_rendezvous`).
    """
    import torch
    import torch.distributed as dist

    layout = read_layout(os.environ)
    torch_device = resolve_device(device, layout.local_rank)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    prepare_deepspeed_environ(os.environ)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    timeout = timedelta(seconds=timeout_s if timeout_s is not None else collective_timeout_s(os.environ))
    if not dist.is_initialized():
        _export_for_env_init(layout, os.environ)
        if backend == "nccl":       # on gloo it is no help, and it hung a failed ZeRO-3 save's exit
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        store = dist.HashStore() if layout.world_size == 1 else None
        with heartbeat.watched_rendezvous(os.environ, layout.rank):
            dist.init_process_group(
                backend=backend,
                store=store,
                rank=layout.rank,
                world_size=layout.world_size,
                timeout=timeout,
            )
            control_group = _gloo_control_group(timeout) if layout.world_size > 1 else None
    else:
        backend = dist.get_backend()
        control_group = _gloo_control_group(timeout) if layout.world_size > 1 else None
    return DistEnv(device=torch_device, backend=backend, control_group=control_group, **vars(layout))


@functools.cache
def _gloo_control_group(timeout: timedelta) -> Any:
    """The process group's gloo companion, made on first use and kept while the group lives
    (torch's process group is per process, so its companion is too; `shutdown` forgets it)."""
    import torch.distributed as dist

    return dist.new_group(backend="gloo", timeout=timeout)


def single_process_env(device: str = "cpu") -> DistEnv:
    """A one-process env without a process group (tools, tests); the runtime skips collectives."""
    return DistEnv(device=resolve_device(device, 0), backend="none", **vars(Layout()))


def _export_for_env_init(layout: Layout, environ: MutableMapping[str, str]) -> None:
    """Make the env:// variables match the layout (Slurm sets none of them; DeepSpeed reads them)."""
    environ.setdefault("MASTER_ADDR", layout.master_addr)
    environ.setdefault("MASTER_PORT", str(layout.master_port))
    environ.setdefault("RANK", str(layout.rank))
    environ.setdefault("LOCAL_RANK", str(layout.local_rank))
    environ.setdefault("WORLD_SIZE", str(layout.world_size))
    environ.setdefault("LOCAL_WORLD_SIZE", str(layout.local_world_size))


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for one process)."""
    import torch.distributed as dist

    if env.is_distributed:
        dist.barrier(group=env.control_group)


def means_over_ranks(numbers: dict[str, float], env: DistEnv,
                     keys: tuple[str, ...] | None = None) -> dict[str, float]:
    """`numbers` with those under `keys` (default: all) averaged over the ranks, in float64 on the
    control group (collective: every rank calls it with the same keys). For logged losses, which
    each rank computes on its share of a step's samples: the mean does not depend on the split."""
    import torch
    import torch.distributed as dist

    names = [key for key in (numbers if keys is None else keys) if key in numbers]
    if not env.is_distributed or not names:
        return numbers
    values = torch.tensor([float(numbers[key]) for key in names], dtype=torch.float64)
    dist.all_reduce(values, group=env.control_group)
    return {**numbers, **dict(zip(names, (values / env.world_size).tolist()))}


def shutdown() -> None:
    """Leave the process group if one exists; safe to call twice."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _gloo_control_group.cache_clear()

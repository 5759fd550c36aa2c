"""Built-in diagnostic tasks: check a cluster's rendezvous and array sharding end to end.

`diagnose.allreduce` proves every rank found the others (gloo or NCCL); `diagnose.items`
processes numbered items as an array would, each exactly once, idempotently.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

from . import atomic

ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "SLURM_JOB_ID", "SLURM_NODEID", "SLURMD_NODENAME")


def allreduce(ctx) -> None:
    """All-reduce the ranks' numbers and record what each rank saw in diagnose/rank-R.json."""
    import torch
    import torch.distributed as dist

    from .diagnose_train import freeze
    from .runtime import distributed

    if int(os.environ.get("RANK", "0")) == ctx.config.get("freeze_rank", -1) and ctx.attempt == 0:
        freeze()        # never joins: its peers wait in the rendezvous (hang-detection tests)
    env = distributed.init(ctx.device)
    value = torch.tensor([float(env.rank + 1)], device=env.device)
    if env.is_distributed:
        dist.all_reduce(value)
    expected = env.world_size * (env.world_size + 1) / 2
    report = {"rank": env.rank, "world_size": env.world_size, "sum": value.item(),
              "expected": expected, "host": socket.gethostname(),
              "env": {k: os.environ.get(k) for k in ENV_KEYS},
              "recorded_env": {k: os.environ.get(k) for k in ctx.config.get("record_env", [])}}
    atomic.write_json(ctx.stage_dir / "diagnose" / f"rank-{env.rank}.json", report)
    if value.item() != expected:
        raise RuntimeError(f"all-reduce gave {value.item()}, expected {expected}")


def items(ctx) -> None:
    """Process items i with i % shard_count == shard_index; skip those already done."""
    if ctx.config.get("leave_thread"):      # a non-daemon thread that never ends: the rank must exit anyway
        threading.Thread(target=threading.Event().wait, name="left-running").start()
    total = int(ctx.config.get("items", 8))
    pause = float(ctx.config.get("seconds_per_item", 0.0))
    if ctx.config.get("fail_shard") == ctx.shard_index:
        raise RuntimeError(f"shard {ctx.shard_index} fails on purpose (config fail_shard)")
    if "fail_rank" in ctx.config and ctx.config["fail_rank"] == int(os.environ.get("RANK", "0")):
        raise RuntimeError(f"rank {ctx.config['fail_rank']} fails on purpose (config fail_rank)")
    if ctx.config.get("fail_on_first_node"):
        _fail_on_first_node(ctx)
    out = ctx.stage_dir / "items"
    for i in range(ctx.shard_index, total, ctx.shard_count):
        if ctx.stop is not None and ctx.stop.requested:
            return _stop(ctx)
        target = out / f"item-{i:05d}.json"
        if target.exists():
            continue
        time.sleep(pause)
        atomic.write_json(target, {"item": i, "shard": ctx.shard_index, "attempt": ctx.attempt})
        with open(out / f"processed-by-shard-{ctx.shard_index}.log", "a") as log:
            log.write(json.dumps({"item": i, "attempt": ctx.attempt}) + "\n")


def _fail_on_first_node(ctx) -> None:
    """Fail on the node the first attempt ran on, every time and each time differently (a broken
    node, not a bug the loop guard would stop at: for the node-exclusion tests)."""
    from .heartbeat import this_node
    first = ctx.stage_dir / f"first-node-shard-{ctx.shard_index}"
    if ctx.attempt == 0:
        atomic.write_text(first, this_node())
    if first.read_text() == this_node():
        raise RuntimeError(f"node {this_node()} fails attempt {ctx.attempt} on purpose (config fail_on_first_node)")


def _stop(ctx):
    from .runtime.preemption import StopForRequeue
    raise StopForRequeue(0)

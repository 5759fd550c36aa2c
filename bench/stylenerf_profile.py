"""Where a StyleNeRF training step spends its time: per-step wall times over one 16-step
regularisation cycle, then a torch.profiler trace of plain steps (kernels launched, GPU busy
time against wall time, the top kernels and CPU-side ops).

    python bench/stylenerf_profile.py --preset paper256 --batch 4 [--engine deepspeed --zero 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def count_ops(training, batches, run, steps: int) -> dict:
    """Aten operators dispatched per step over `steps` steps (all of them, and without views)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    views = {"view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "unsqueeze", "squeeze",
             "select", "slice", "as_strided", "alias", "detach", "split", "unbind", "split_with_sizes", "narrow"}

    class Count(TorchDispatchMode):
        total = compute = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.total += 1
            self.compute += func.overloadpacket.__name__ not in views
            return func(*args, **(kwargs or {}))

    counter = Count()
    with counter:
        for _ in range(steps):
            training.step(batches, run)
    return {"ops_per_step": counter.total / steps, "nonview_ops_per_step": counter.compute / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--engine", default="deepspeed")
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--graphs", action="store_true", help="CUDA graphs of the regularisers' passes")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=16, help="steps before the timed cycle")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", default="")
    parser.add_argument("--model", default="{}", help="ModelConfig overrides as JSON (narrower widths count "
                        "the same operators faster on CPU)")
    parser.add_argument("--ops-only", action="store_true", help="only count operators over a 16-step cycle")
    args = parser.parse_args()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29700"))
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(ROOT))
    from bench.stylenerf_bench import _batches, _sync, _training

    config = {"preset": args.preset, "engine": args.engine, "zero_stage": args.zero, "precision": "bf16",
              "batch": args.batch, "compile": args.compile, "graphs": args.graphs,
              "checkpointing": False, "metric_images": 16,
              "device": args.device, "model": json.loads(args.model)}
    training, run, env = _training(config)
    batches = _batches(training, env)
    for _ in range(args.warmup):
        training.step(batches, run)
    if args.ops_only:
        print(json.dumps({"preset": args.preset, "engine": args.engine, "zero": args.zero,
                          **count_ops(training, batches, run, 16)}), flush=True)
        return
    _sync(env.device)
    times = []
    for _ in range(16):
        start = time.perf_counter()
        training.step(batches, run)
        _sync(env.device)
        times.append(time.perf_counter() - start)
    training.step(batches, run)              # step 33: plain
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    _sync(env.device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            training.step(batches, run)
        _sync(env.device)
    wall = (time.perf_counter() - start) / args.profile_steps
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    gpu_us = sum(e.self_device_time_total for e in kernels) / args.profile_steps
    launches = sum(e.count for e in kernels) / args.profile_steps
    cpu_ops = sum(e.count for e in events if e.key.startswith("aten::")) / args.profile_steps
    summary = {"preset": args.preset, "batch": args.batch, "engine": args.engine, "zero": args.zero,
               "compile": args.compile, "graphs": args.graphs, "cycle_step_s": times,
               "cycle_images_per_s": 16 * args.batch / sum(times),
               "plain_step_wall_ms": 1000 * wall, "plain_step_gpu_busy_ms": gpu_us / 1000,
               "kernels_per_step": launches, "aten_ops_per_step": cpu_ops,
               "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if env.device.type == "cuda" else None}
    print(json.dumps(summary), flush=True)
    sort = "self_cuda_time_total" if env.device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60), flush=True)
    print(events.table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()

"""Launcher overhead: what `python -m launcher` costs before a training step runs.

Measures
- the wall time of `python -m launcher --help` (the CLI path must not import torch),
- start to first optimizer step of the same toy DDP job (2 ranks; on CUDA one per GPU, at most 2)
  run two ways: through `python -m launcher submit` (local backend: spec validation, run folder,
  supervisor, torchrun, runtime, checkpoint restore probe) and through plain `torchrun` on a
  minimal script.
Runs on CPU or CUDA (`--device`). Prints a table and writes bench/results/launcher-<accel>.json.

    .venv/bin/python bench/launcher_bench.py [--device cpu|cuda] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import report

PLAIN_SCRIPT = """
import sys, time, torch, torch.distributed as dist
from launcher import diagnose_train as toy
device = sys.argv[1]
dist.init_process_group("nccl" if device == "cuda" else "gloo")
rank = dist.get_rank()
if device == "cuda":
    torch.cuda.set_device(rank)
cfg = toy.ToyConfig(threads=1)
model = torch.nn.parallel.DistributedDataParallel(
    toy.build_model(cfg).to(device), device_ids=[rank] if device == "cuda" else None)
optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
inputs, targets = toy.make_dataset(cfg)
loss = torch.nn.functional.mse_loss(model(inputs[:cfg.batch_size].to(device)), targets[:cfg.batch_size].to(device))
loss.backward()
optimizer.step()
if device == "cuda":
    torch.cuda.synchronize()
if rank == 0:
    print("FIRST_STEP", time.time(), flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def gpu_count() -> int:
    """GPUs torch sees, asked in a child so this process stays free of CUDA state."""
    return int(subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                              capture_output=True, text=True, check=True).stdout)


def help_wall_time(repeats: int) -> dict:
    """Median wall time of `python -m launcher --help`, and whether the CLI imports torch."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "launcher", "--help"], capture_output=True, check=True,
                       cwd=report.REPO)
        times.append(time.perf_counter() - start)
    probe = subprocess.run([sys.executable, "-c", "import sys, launcher.cli; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True, cwd=report.REPO).stdout.strip()
    return {"help_s": statistics.median(times), "help_s_all": times, "cli_imports_torch": probe == "True"}


def launcher_first_step(device: str, ranks: int, root: Path) -> float:
    """Seconds from `python -m launcher submit` to the first logged step of the toy job."""
    gpus = ranks if device == "cuda" else 0
    spec = root / "spec.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: launcher-bench
        run_root: runs
        local: {{device: {device}, max_restarts: 0}}
        stages:
          train:
            task: launcher.diagnose_train:main
            resources: {{tasks_per_node: {ranks}, gpus_per_node: {gpus}}}
            checkpoint: {{every_steps: 0, keep_last: 1}}
            config: {{engine: ddp, steps: 2}}
    """))
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "launcher", "submit", str(spec)], capture_output=True,
                         text=True, cwd=root, check=True).stdout
    run = Path(next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("directory ")))
    metrics = [json.loads(line) for line in (run / "stages" / "train" / "metrics.jsonl").read_text().splitlines()]
    return metrics[0]["time"] - start


def torchrun_first_step(device: str, ranks: int, root: Path) -> float:
    """Seconds from `torchrun --nproc_per_node RANKS` to the first step of the same toy model."""
    script = root / "plain.py"
    script.write_text(PLAIN_SCRIPT)
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                             "--standalone", str(script), device], capture_output=True, text=True, cwd=report.REPO)
    if result.returncode != 0:
        raise RuntimeError(f"plain torchrun exited {result.returncode}: {result.stderr[-2000:]}")
    return float(next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("FIRST_STEP"))) - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    results = help_wall_time(max(args.repeats, 5))
    ranks = 2 if args.device == "cpu" else min(2, gpu_count())
    launched, plain = [], []
    for repeat in range(args.repeats + 1):          # the first round only warms the page cache
        with tempfile.TemporaryDirectory(prefix="launcher-bench-") as root:
            first = (launcher_first_step(args.device, ranks, Path(root)),
                     torchrun_first_step(args.device, ranks, Path(root)))
            if repeat:
                launched.append(first[0])
                plain.append(first[1])
    results.update(launcher_first_step_s=statistics.median(launched), torchrun_first_step_s=statistics.median(plain),
                   launcher_first_step_s_all=launched, torchrun_first_step_s_all=plain)
    results["overhead_s"] = results["launcher_first_step_s"] - results["torchrun_first_step_s"]
    print(report.table([
        ("python -m launcher --help", f"{results['help_s']:.2f} s", "imports torch: "
         f"{'YES' if results['cli_imports_torch'] else 'no'}"),
        ("launcher submit -> first step", f"{results['launcher_first_step_s']:.2f} s", f"{ranks} rank(s), toy DDP"),
        ("plain torchrun -> first step", f"{results['torchrun_first_step_s']:.2f} s", "same model, no runtime"),
        ("launcher overhead", f"{results['overhead_s']:.2f} s", f"median of {args.repeats}"),
    ], ("measure", "value", "note")))
    import torch  # noqa: F401  (after the runs: only so metadata() can name the GPU)
    report.write("launcher", {**report.metadata({"device": args.device, "ranks": ranks, "repeats": args.repeats}),
                              "results": results}, args.output)
    return 0


if __name__ == "__main__":
    report.run_and_exit(main)

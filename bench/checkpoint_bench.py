"""Checkpoint benchmark: what preemption-safe checkpoints cost for a StyleNeRF-1024-sized model.

Measures, for a ~150M-parameter stack of Linear layers with AdamW state:
- save and load throughput of the checkpoint protocol (one process; hashing cost separately),
- the training stall of a synchronous save versus an async one (one process): the save call plus
  the slowdown of the training steps that run while the save is written, until its commit; for
  the toy model's state and for the StyleNeRF paper256/paper1024 states (G, D, G_ema, AdamW of
  G and D, built on the device without training; the toy model's steps are the training then),
- the cost of the per-step stop agreement (one all-reduce, 2 ranks),
- signal-to-committed-checkpoint and restart-to-first-step times of a real 2-rank job run by
  `python -m launcher submit --backend local` (SIGUSR2 to every rank, as Slurm sends it).
Runs on CPU or CUDA unchanged. Prints a table and writes bench/results/checkpoint-<host>.json,
then exits at once (naming any thread or child process that would have kept it alive).

    .venv/bin/python bench/checkpoint_bench.py [--width 4096 --depth 9] [--quick] [--parts stall]

(with the project installed, e.g. `pip install -e .`, or PYTHONPATH set to the repository root).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import torch

import report as report_meta

from launcher import diagnose_train as toy
from launcher.backends.local import supervisor_lock
from launcher.runs import RunDir
from launcher.runtime import checkpoint, distributed
from launcher.runtime.context import CheckpointPolicy

REPO = report_meta.REPO
PARTS = ("save_load", "stall", "agree", "job")


# ---------------------------------------------------------------- one process


def model_and_optimizer(cfg: toy.ToyConfig, device: torch.device):
    """The toy MLP at benchmark size after one AdamW step, so the optimizer state exists."""
    model = toy.build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    train_step(model, optimizer, cfg, device)
    return model, optimizer


def train_step(model, optimizer, cfg: toy.ToyConfig, device: torch.device) -> None:
    inputs = torch.randn(cfg.batch_size, 16, device=device)
    loss = model(inputs).pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench_save_load(cfg: toy.ToyConfig, env: distributed.DistEnv, root: Path, repeats: int) -> dict:
    """Sync save (write + hash + commit), verification alone, and restore (verify + load)."""
    model, optimizer = model_and_optimizer(cfg, env.device)
    state = {"model": checkpoint.ModuleState(model), "optim": checkpoint.OptimizerState(optimizer),
             "rng": checkpoint.RNGState(), "progress": {"epoch": 0}}
    manager = checkpoint.CheckpointManager(root, env, CheckpointPolicy(keep_last=1))
    saves, verifies, loads = [], [], []
    for step in range(1, repeats + 1):
        started = time.perf_counter()
        manager.save(step, state)
        saves.append(time.perf_counter() - started)
        folder = root / checkpoint.step_dirname(step)
        started = time.perf_counter()
        assert checkpoint.verify(folder) == []
        verifies.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert checkpoint.CheckpointManager(root, env).restore_latest(state) == step
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        loads.append(time.perf_counter() - started)
    size = folder_bytes(root / checkpoint.step_dirname(repeats))
    gigabytes = size / 1e9
    return {"parameters": sum(p.numel() for p in model.parameters()), "checkpoint_bytes": size,
            "save_s": min(saves), "save_GBps": gigabytes / min(saves),
            "verify_s": min(verifies), "verify_GBps": gigabytes / min(verifies),
            "load_s": min(loads), "load_GBps": gigabytes / min(loads),
            "repeats": repeats}


def stylenerf_state(preset: str, device: torch.device) -> tuple[dict, int]:
    """What stylenerf.train checkpoints for `preset` with the DDP engine (G, D, G_ema, the AdamW
    state of G and D), on `device` without training: one AdamW step on zero gradients creates
    the moments. Also the parameter count."""
    from nerffacespeech.configs.stylenerf import PRESETS
    from nerffacespeech.models import stylenerf

    generator, discriminator = (m.to(device) for m in stylenerf.build(PRESETS[preset].model))
    g_ema = stylenerf.Generator(PRESETS[preset].model).to(device)
    state = {"G_ema": checkpoint.ModuleState(g_ema)}
    for name, module in (("G", generator), ("D", discriminator)):
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
        for parameter in module.parameters():
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        state.update({name: checkpoint.ModuleState(module), f"{name}_optim": checkpoint.OptimizerState(optimizer)})
    parameters = sum(p.numel() for m in (generator, discriminator, g_ema) for p in m.parameters())
    return state, parameters


def timed_step(model, optimizer, cfg: toy.ToyConfig, device: torch.device) -> float:
    started = time.perf_counter()
    train_step(model, optimizer, cfg, device)
    return time.perf_counter() - started


def measure_stall(manager: checkpoint.CheckpointManager, step: int, state: dict, train, steps_after: int) -> dict:
    """One save's stall: its call, plus how much longer than the median step before it the
    steps took that ran until it was committed (`due` included, as the step loop calls it)."""
    step_s = statistics.median(train() for _ in range(5))
    started = time.perf_counter()
    manager.save(step, state)
    call = time.perf_counter() - started
    slowdown, steps, commit = 0.0, 0, 0.0
    while steps < steps_after or manager.pending:          # train until the save is committed
        started = time.perf_counter()
        train()
        pending, trained = manager.pending, time.perf_counter()
        manager.due(step + steps + 1)
        if pending and not manager.pending:
            commit = time.perf_counter() - trained         # the commit, on the trainer's thread
        slowdown += time.perf_counter() - started - step_s
        steps += 1
    slowdown = max(slowdown, 0.0)
    return {"step_s": step_s, "save_call_s": call, "steps_until_committed": steps,
            "slowdown_of_later_steps_s": slowdown, "commit_s": commit, "stall_s": call + slowdown}


def bench_stall(cfg: toy.ToyConfig, env: distributed.DistEnv, root: Path, steps_after: int,
                states: list[str]) -> dict:
    """How long training waits for a save, sync and async, for each state in `states` ("toy":
    the training model's own state; a StyleNeRF preset name: that preset's state)."""
    model, optimizer = model_and_optimizer(cfg, env.device)

    def train() -> float:
        return timed_step(model, optimizer, cfg, env.device)

    result = {}
    for name in states:
        if name == "toy":
            state = {"model": checkpoint.ModuleState(model), "optim": checkpoint.OptimizerState(optimizer)}
            parameters = sum(p.numel() for p in model.parameters())
        else:
            state, parameters = stylenerf_state(name, env.device)
        rows = {"parameters": parameters}
        for mode, async_save in (("sync", False), ("async", True)):
            manager = checkpoint.CheckpointManager(root / name / mode, env,
                                                   CheckpointPolicy(keep_last=1, async_save=async_save))
            for save in (1, 2):                  # the second save shows the steady state (buffers reused)
                rows[mode if save == 2 else f"{mode}_first"] = measure_stall(manager, save, state, train, steps_after)
            rows["checkpoint_bytes"] = folder_bytes(root / name / mode / checkpoint.step_dirname(2))
        result[name] = rows
        shutil.rmtree(root / name)
    return result


# ---------------------------------------------------------------- 2 ranks


AGREE_WORKER = """
import os, time, torch
from launcher.runtime import distributed
from launcher.runtime.preemption import StopRequest
torch.set_num_threads(1)
env = distributed.init(os.environ.get("BENCH_DEVICE", "auto"))
stop = StopRequest()
for _ in range(50):
    stop.agree(env)
calls = int(os.environ.get("BENCH_AGREE_CALLS", "2000"))
started = time.perf_counter()
for _ in range(calls):
    stop.agree(env)
elapsed = time.perf_counter() - started
if env.is_main:
    print("AGREE_US", 1e6 * elapsed / calls, flush=True)
distributed.shutdown()
"""


def bench_agree(ranks: int, device: str) -> dict:
    """Microseconds per `StopRequest.agree` (one MAX all-reduce of one int) across `ranks` processes."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "agree_worker.py"
        script.write_text(AGREE_WORKER)
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
             str(script)], capture_output=True, text=True, cwd=REPO, timeout=300,
            env={**os.environ, "BENCH_DEVICE": device})
    lines = [line for line in result.stdout.splitlines() if line.startswith("AGREE_US")]
    if not lines:
        raise RuntimeError(f"agree worker failed:\n{result.stdout}\n{result.stderr}")
    return {"ranks": ranks, "device": device, "agree_us_per_call": float(lines[0].split()[1])}


def job_spec(cfg: dict, ranks: int, device: str) -> str:
    return textwrap.dedent(f"""
        name: checkpoint-bench
        run_root: runs
        local: {{device: {device}, max_restarts: 2}}
        stages:
          train:
            task: launcher.diagnose_train:main
            resources: {{tasks_per_node: {ranks}}}
            checkpoint: {{every_steps: 0, keep_last: 1}}
            config: {json.dumps(cfg)}
    """)


def _attempts(run: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in RunDir(run).ledger_dir("train").glob("shard-0-attempt-*.json")]
    return sorted(records, key=lambda r: r["attempt"])


def _metrics(run: Path) -> list[dict]:
    path = RunDir(run).stage("train").metrics
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def _wait(predicate, timeout: float, what: str, interval: float = 0.01):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def bench_signal_and_restart(cfg: toy.ToyConfig, ranks: int, device: str, root: Path) -> dict:
    """SIGUSR2 to every rank of a running job → committed checkpoint; then the supervisor's restart."""
    steps = 8
    spec = root / "spec.yaml"
    spec.write_text(job_spec({**vars(cfg), "steps": steps}, ranks, device))
    out = subprocess.run([sys.executable, "-m", "launcher", "submit", str(spec), "--detach"],
                         capture_output=True, text=True, cwd=root, check=True).stdout
    run = Path(next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("directory ")))
    latest = RunDir(run).stage("train").latest_checkpoint
    _wait(lambda: len(_metrics(run)) >= 3, 900, "three training steps")
    top = psutil.Process(int(_attempts(run)[0]["job_id"].split(":")[1]))
    workers = [p for p in [top, *top.children(recursive=True)] if "launcher.entry" in p.cmdline()]
    signalled = time.time()
    for worker in workers:
        worker.send_signal(signal.SIGUSR2)
    _wait(latest.exists, 900, "the committed checkpoint")
    committed = time.time()
    _wait(lambda: len(_attempts(run)) >= 2 and _attempts(run)[0]["end"], 300, "the restart")
    _wait(lambda: not supervisor_lock(RunDir(run)).is_held(), 1800, "the run to finish")
    first, second = _attempts(run)[:2]
    metrics = _metrics(run)
    first_step_fresh = min(m["time"] for m in metrics if m["time"] > first["start"])
    first_step_resumed = min(m["time"] for m in metrics if m["time"] > second["start"])
    step_times = [b["time"] - a["time"] for a, b in zip(metrics, metrics[1:]) if b["step"] == a["step"] + 1]
    return {"ranks": ranks, "device": device, "step_s": min(step_times),
            "signal_to_commit_s": committed - signalled,
            "commit_to_exit_s": first["end"] - committed,
            "exit_code_first_attempt": first["exit_code"],
            "start_to_first_step_fresh_s": first_step_fresh - first["start"],
            "restart_to_first_step_s": first_step_resumed - second["start"],
            "stop_to_first_step_s": first_step_resumed - first["end"],
            "checkpoint_step": second["checkpoint_step"],
            "final_exit_code": _attempts(run)[-1]["exit_code"]}


# ---------------------------------------------------------------- report


def print_table(results: dict) -> None:
    rows = []
    if "save_load" in results:
        io = results["save_load"]
        rows += [
            ("model parameters", f"{io['parameters'] / 1e6:.1f} M"),
            ("checkpoint size (weights + AdamW + RNG)", f"{io['checkpoint_bytes'] / 1e9:.2f} GB"),
            ("sync save (write, fsync, sha256, commit)", f"{io['save_s']:.2f} s  = {io['save_GBps']:.2f} GB/s"),
            ("verify (sha256 of every file)", f"{io['verify_s']:.2f} s  = {io['verify_GBps']:.2f} GB/s"),
            ("restore (verify + load)", f"{io['load_s']:.2f} s  = {io['load_GBps']:.2f} GB/s"),
        ]
    for name, stall in results.get("stall", {}).items():
        what = f"{name} state, {stall['checkpoint_bytes'] / 1e9:.2f} GB"
        rows += [
            (f"stall, sync save ({what})", f"{stall['sync']['stall_s']:.2f} s  (step {stall['sync']['step_s']:.3f} s)"),
            (f"stall, async save ({what})", f"{stall['async']['stall_s']:.2f} s  (call "
                                            f"{stall['async']['save_call_s']:.2f} s, commit "
                                            f"{stall['async']['commit_s']:.2f} s; first save "
                                            f"{stall['async_first']['stall_s']:.2f} s)"),
        ]
    if "agree" in results:
        agree = results["agree"]
        rows.append((f"stop agreement, {agree['ranks']} ranks", f"{agree['agree_us_per_call']:.0f} us/step"))
    if "job" in results:
        job = results["job"]
        rows += [
            (f"job step ({job['ranks']} ranks, {job['device']})", f"{job['step_s']:.2f} s"),
            ("SIGUSR2 -> committed checkpoint", f"{job['signal_to_commit_s']:.2f} s"),
            ("commit -> attempt exit (75)", f"{job['commit_to_exit_s']:.2f} s"),
            ("start -> first step, fresh", f"{job['start_to_first_step_fresh_s']:.2f} s"),
            ("restart -> first step, resumed", f"{job['restart_to_first_step_s']:.2f} s"),
        ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=9, help="hidden width x width layers (9 → ~151M params)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a ~1M-parameter model, to check the bench runs")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--states", default="toy,paper256,paper1024",
                        help="states whose save stall is measured: toy and/or StyleNeRF presets")
    parser.add_argument("--workdir", type=Path, default=None, help="where checkpoints go (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(set(parts) - set(PARTS))}; choose from {', '.join(PARTS)}")
    if args.quick:
        args.width, args.depth = 512, 4
    threads = max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    cfg = toy.ToyConfig(width=args.width, depth=args.depth, batch_size=args.batch_size, dropout=0.0,
                        threads=threads)
    env = distributed.single_process_env("auto")
    gpus = torch.cuda.device_count()
    ranks, job_device = (min(2, gpus), "cuda") if gpus else (2, "cpu")
    job_cfg = toy.ToyConfig(width=args.width, depth=args.depth, batch_size=args.batch_size, dropout=0.0,
                            threads=max(1, threads // ranks))
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="checkpoint-bench-", dir=args.workdir))
    results = {}
    try:
        if "save_load" in parts:
            print("save and load ...", flush=True)
            results["save_load"] = bench_save_load(cfg, env, root / "io", args.repeats)
            shutil.rmtree(root / "io")
        if "stall" in parts:
            print("training stall, sync and async ...", flush=True)
            results["stall"] = bench_stall(cfg, env, root / "stall", steps_after=3, states=args.states.split(","))
        if "agree" in parts:
            print("stop agreement ...", flush=True)
            results["agree"] = bench_agree(ranks, job_device)
        if "job" in parts:
            print(f"signal and restart of a {ranks}-rank job ...", flush=True)
            results["job"] = bench_signal_and_restart(job_cfg, ranks, job_device, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {**report_meta.metadata({"width": args.width, "depth": args.depth, "batch_size": args.batch_size,
                                      "repeats": args.repeats, "threads": threads, "parts": parts,
                                      "states": args.states}),
              "load_average_before": load_before,       # shared machines are noisy
              "device": str(env.device), "workdir_filesystem": str(args.workdir or tempfile.gettempdir()),
              "results": results}
    print_table(results)
    report_meta.write("checkpoint" + ("-quick" if args.quick else ""), report, args.output)
    return 0


if __name__ == "__main__":
    report_meta.run_and_exit(main)

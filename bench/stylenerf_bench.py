"""StyleNeRF training throughput: images/s, sec/kimg, whole-run peak memory and model FLOP
utilisation, per preset x engine x ZeRO stage x precision (x torch.compile x CUDA graphs).

    python bench/stylenerf_bench.py --zero 0,2 --budget 240  # CUDA: the suite's rows in ~4 minutes
    python bench/stylenerf_bench.py --presets tiny --batch 4 --steps 4 --warmup 2 --device cpu   # a CPU check

Every configuration runs in its own process (one GPU, world size 1) on synthetic images, from
step 0 at full resolution, at the batch sizes the original was measured at (12.3 img/s at 256 px
batch 4, 23.6 at batch 8, 5.4 at 1024 px batch 4, one H100). Rows run in priority order (ZeRO-2
for every preset and batch, then ZeRO-0, DDP, ZeRO-1, ZeRO-3) until the budget is spent. A run
is: the first steps, `--warmup` more, `--steps` timed steps (a multiple of 16 keeps the lazy
R1/path-length mix exact), then a snapshot (image grid of 16 fixed seeds) and a small SWD
evaluation; peak memory covers all of it. Model FLOPs are counted once per preset, in its first
eager row after the timed steps (scaled per image for other batch sizes), with
torch.utils.flop_counter's formulas weighted as in a 16-step regularisation cycle; the
utilisation divides them by the bf16 matrix-product rate measured on the same device. Prints a
table and writes JSON (default bench/results/stylenerf-<accelerator>.json). A global `--budget` in seconds
stops starting configurations that would not finish in time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report as bench_report

ROOT = bench_report.REPO
RESULT = "RESULT "
CYCLE = 16          # R1 every 16 steps, path length every 4: a 16-step cycle has the exact mix


# ---------------------------------------------------------------------------------- children

def _child_env(port: int) -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def matmul_rate(device: str, seconds: float = 2.0) -> dict:
    """Dense bf16 matrix-product FLOP/s: the ceiling FLOP utilisation is measured against."""
    import torch

    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    _sync(dev)
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            a @ b
        count += 10
        _sync(dev)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {"matmul_bf16_tflops": 2 * n ** 3 * count / elapsed / 1e12, "matmul_n": n}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SyntheticImages:
    """Random uint8 images behind the dataset interface the metrics use."""

    def __init__(self, count: int, resolution: int):
        import torch

        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (count, 3, resolution, resolution), dtype=torch.uint8, generator=generator)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, item):
        index, flip = item
        return self.images[index].flip(-1) if flip else self.images[index]


def _training(config: dict):
    """A StyleNeRFTraining for one configuration, at full resolution from step 0."""
    import torch

    from launcher.runtime import distributed
    from nerffacespeech.configs.stylenerf import TrainConfig
    from nerffacespeech.train.stylenerf import RunState, StyleNeRFTraining

    parsed, problems = TrainConfig.parse({
        "data": "synthetic", "preset": config["preset"], "engine": config["engine"],
        "zero_stage": config["zero_stage"], "precision": config["precision"],
        "batch_per_gpu": config["batch"], "batch_total": config["batch"], "curriculum_kimg": None,
        "compile": config["compile"], "cuda_graphs": config.get("graphs", False),
        "activation_checkpointing": config["checkpointing"],
        "metric_images": config["metric_images"], "workers": 0, "model": config.get("model", {})})
    if problems:
        raise ValueError(problems)
    env = distributed.init(config["device"])
    cfg = parsed.resolved(env.world_size)
    if config.get("compile_cache"):            # the task's own call (stylenerf.main), in a given folder
        from launcher.runtime import compile_cache
        from nerffacespeech.train.stylenerf import compile_cache_key

        compile_cache.use_run_cache(Path(config["compile_cache"]), env.device, compile_cache_key(cfg))
    torch.manual_seed(0)
    return StyleNeRFTraining(cfg, env), RunState.fresh(), env


def _batches(training, env, count: int = 8):
    import torch

    res = training.model_cfg.resolution
    pool = torch.randint(0, 256, (count, training.cfg.batch_per_gpu, 3, res, res), dtype=torch.uint8,
                         device=env.device)
    i = 0
    while True:
        yield pool[i % count]
        i += 1


def _flop_counter():
    """A dispatch mode summing torch.utils.flop_counter's formulas (matmuls, convolutions and
    their backward passes). FlopCounterMode itself tracks modules with backward hooks, which
    autograd refuses inside `autograd.grad` (the regularisers' double backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    return Counter()


def count_flops(training, batches, run) -> float:
    """Model FLOPs per training step, averaged over one regularisation cycle: from the next cycle
    start, 5 steps are counted (R1 + path length, 3 plain, path length) and weighted as in the cycle."""
    while run.progress["step"] % CYCLE:
        training.step(batches, run)
    counts = []
    for _ in range(5):
        counter = _flop_counter()
        with counter:
            training.step(batches, run)
        counts.append(counter.total)
    return (counts[0] + 3 * counts[4] + (CYCLE - 4) * sum(counts[1:4]) / 3) / CYCLE


def graph_pool_bytes(device) -> int:
    """Memory held by CUDA graphs' private pools (reserved for their replays; no other allocation
    can use it, unlike the caching allocator's ordinary free blocks)."""
    import torch

    return sum(seg["total_size"] for seg in torch.cuda.memory_snapshot()
               if seg.get("device") == device.index and tuple(seg.get("segment_pool_id", (0, 0))) != (0, 0))


def run_config(config: dict) -> dict:
    """Throughput and whole-run peak memory of one configuration."""
    import torch

    from nerffacespeech.metrics.evaluate import MetricSuite

    start = time.perf_counter()
    training, run, env = _training(config)
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    batches = _batches(training, env)
    first = time.perf_counter()
    training.step(batches, run)
    _sync(env.device)
    first_step_s = time.perf_counter() - first
    for _ in range(config["warmup"]):
        training.step(batches, run)
    _sync(env.device)
    timed = time.perf_counter()
    for _ in range(config["steps"]):
        training.step(batches, run)
    _sync(env.device)
    seconds = time.perf_counter() - timed
    flops = count_flops(training, batches, run) if config.get("count_flops") else None
    snapshot = time.perf_counter()
    grid_z = torch.randn(16, training.model_cfg.z_dim, device=env.device)
    training.sample(grid_z)
    suite = MetricSuite(("swd",), SyntheticImages(config["metric_images"], training.model_cfg.resolution),
                        config["metric_images"], config["batch"], 0, 1, env.device)
    swd = suite.evaluate(training.sample, training.model_cfg.z_dim)["swd"]
    _sync(env.device)
    images = config["steps"] * config["batch"]
    out = {"images_per_s": images / seconds, "sec_per_kimg": 1000 * seconds / images,
           "step_ms": 1000 * seconds / config["steps"], "first_step_s": first_step_s,
           "snapshot_s": time.perf_counter() - snapshot, "setup_s": first - start, "swd_untrained": swd,
           "params_g": training.sizes["G"], "params_d": training.sizes["D"], "precision": training.precision}
    if flops is not None:
        out["counted_flops_per_step"] = flops
    if env.device.type == "cuda":
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated(env.device) / 2 ** 30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(env.device) / 2 ** 30
        out["graph_pool_gib"] = graph_pool_bytes(env.device) / 2 ** 30
        out["device_name"] = torch.cuda.get_device_name(env.device)
    return out


def child_main(kind: str, config: dict) -> None:
    import warnings

    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    _child_env(config.get("port", 29600))
    if config.get("threads"):
        import torch

        torch.set_num_threads(config["threads"])
    result = {"matmul": matmul_rate, "config": run_config}[kind](
        config["device"] if kind == "matmul" else config)
    print(RESULT + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------- orchestrator

def _spawn(kind: str, config: dict, timeout: float) -> dict:
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(config)], cwd=ROOT,
                              capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode == 0 and lines:
        return {**json.loads(lines[-1][len(RESULT):]), "wall_s": time.perf_counter() - started}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-1500:]}


def _configs(args) -> list[dict]:
    """Configurations in priority order: ZeRO-2 first for every preset, then the other stages, DDP, compile."""
    out = []
    variants = [(e, z) for e in args.engines for z in (args.zero if e == "deepspeed" else [0])]
    priority = [("deepspeed", 2), ("deepspeed", 0), ("ddp", 0), ("deepspeed", 1), ("deepspeed", 3)]
    variants.sort(key=lambda v: priority.index(v) if v in priority else len(priority))
    for compiled, graphs in [(c, g) for g in args.graphs for c in args.compile]:
        for engine, zero in variants:
            for precision in args.precisions:
                for preset in args.presets:
                    for batch in _batch_sizes(args.batch, preset):
                        out.append({"preset": preset, "engine": engine, "zero_stage": zero, "precision": precision,
                                    "batch": batch, "compile": compiled, "graphs": graphs,
                                    "checkpointing": args.checkpointing,
                                    "steps": args.steps, "warmup": args.warmup,
                                    "metric_images": args.metric_images, "device": args.device,
                                    "threads": args.threads})
    return out


def _batch_sizes(spec: str, preset: str) -> list[int]:
    """`auto`: the batch sizes the original was measured at for `preset` (else 4); or a list like 4,8."""
    if spec == "auto":
        return sorted(b for p, b in ORIGINAL_IMAGES_PER_S if p == preset) or [4]
    return [int(b) for b in spec.split(",")]


def _table(results: list[dict]) -> str:
    head = (f"{'preset':<10} {'batch':>5} {'engine':<10} {'zero':>4} {'prec':<5} {'comp':<5} {'graph':<5} {'img/s':>8} "
            f"{'s/kimg':>8} "
            f"{'step ms':>8} {'peak GiB':>9} {'MFU %':>6} {'1st step s':>11}  note")
    lines = [head, "-" * len(head)]
    for r in results:
        c = r["config"]
        if "error" in r:
            note, nums = r["error"][:90], f"{'-':>8} {'-':>8} {'-':>8} {'-':>9} {'-':>6}"
        else:
            peak = f"{r['peak_allocated_gib']:9.2f}" if "peak_allocated_gib" in r else f"{'n/a':>9}"
            mfu = f"{100 * r['mfu']:6.2f}" if "mfu" in r else f"{'n/a':>6}"
            first = f"{r['first_step_s']:.1f}"
            if r.get("first_step_resumed_s") is not None:      # cold / resumed on the cache
                first += f"/{r['first_step_resumed_s']:.1f}"
            nums = f"{r['images_per_s']:8.2f} {r['sec_per_kimg']:8.1f} {r['step_ms']:8.1f} {peak} {mfu} {first:>11}"
            note = ""
            if "target_images_per_s" in r:
                verdict = "meets" if r["images_per_s"] >= r["target_images_per_s"] else "BELOW"
                note = f"{verdict} 3x original ({r['target_images_per_s']:.1f} img/s)"
            if c["preset"] == "paper1024" and "peak_allocated_gib" in r:
                note += "; peak " + ("<= 16 GiB" if r["peak_allocated_gib"] <= 16 else "ABOVE 16 GiB")
        lines.append(f"{c['preset']:<10} {c['batch']:>5} {c['engine']:<10} {c['zero_stage']:>4} {c['precision']:<5} "
                     f"{str(c['compile']):<5} {str(c.get('graphs', False)):<5} {nums}  {note}")
    return "\n".join(lines)


# the original StyleNeRF on one H100 (FACTS.md): ours must reach 3x its images/s
ORIGINAL_IMAGES_PER_S = {("paper256", 4): 12.3, ("paper256", 8): 23.6, ("paper1024", 4): 5.4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--presets", default="paper256,paper1024")
    parser.add_argument("--engines", default="deepspeed,ddp")
    parser.add_argument("--zero", default="0,1,2,3")
    parser.add_argument("--precisions", default="bf16")
    parser.add_argument("--compile", default="off", choices=["off", "on", "both"])
    parser.add_argument("--graphs", default="off", choices=["off", "on", "both"],
                        help="CUDA graphs of the regularisers' passes (training's default: on GPUs up to 512 px)")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing in G")
    parser.add_argument("--batch", default="auto", help="per-GPU batch sizes, e.g. 4,8; auto: the original's")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--metric-images", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per child (0: torch's default)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole benchmark")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--resume-first-step", action="store_true",
                        help="run each configuration twice on one fresh compile cache: the second run's first "
                             "step is a resumed attempt's (kernels from the run directory's cache)")
    parser.add_argument("--out", default=None, help="default: bench/results/stylenerf-<accelerator>.json")
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], json.loads(args.child[1]))
        return
    args.presets = args.presets.split(",")
    args.engines = args.engines.split(",")
    args.zero = [int(z) for z in args.zero.split(",")]
    args.precisions = args.precisions.split(",")
    args.compile = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    args.graphs = {"off": [False], "on": [True], "both": [False, True]}[args.graphs]
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    deadline = time.perf_counter() + args.budget

    def remaining() -> float:
        return deadline - time.perf_counter()

    import torch   # noqa: F401  (metadata names the GPU)

    report: dict = {**bench_report.metadata({k: v for k, v in vars(args).items() if k != "child"}), "results": []}
    port = 29600
    report["matmul"] = _spawn("matmul", {"device": args.device, "port": port}, min(120, remaining()))
    print(f"bf16 matmul: {report['matmul']}", flush=True)
    flops: dict[str, dict] = {}
    for config in _configs(args):
        port += 1
        if remaining() < 30:
            report["results"].append({"config": config, "error": "skipped: benchmark budget spent"})
            continue
        key = config["preset"]
        count = not args.no_flops and not config["compile"] and not config["graphs"] and key not in flops
        if args.resume_first_step:
            config["compile_cache"] = tempfile.mkdtemp(prefix="compile-cache-")
        result = {"config": config, **_spawn("config", {**config, "port": port, "count_flops": count},
                                             min(300, remaining()))}
        if args.resume_first_step and "error" not in result:
            port += 1
            again = _spawn("config", {**config, "port": port}, min(300, remaining()))
            result["first_step_resumed_s"] = again.get("first_step_s")
            result["resumed_error"] = again.get("error")
        if "counted_flops_per_step" in result:
            flops[key] = {"flops_per_step": result.pop("counted_flops_per_step"), "batch": config["batch"]}
        counted = flops.get(key, {}).get("flops_per_step")
        if counted:              # counted at the first batch size run; every layer's work is per image
            counted *= config["batch"] / flops[key]["batch"]
        rate = report["matmul"].get("matmul_bf16_tflops")
        if "error" not in result and counted and rate:
            result["flops_per_step"] = counted
            result["achieved_tflops"] = counted / (result["step_ms"] / 1000) / 1e12
            result["mfu"] = result["achieved_tflops"] / rate
        original = ORIGINAL_IMAGES_PER_S.get((config["preset"], config["batch"]))
        if original:
            result["original_images_per_s"] = original
            result["target_images_per_s"] = 3 * original
        report["results"].append(result)
        print(json.dumps(result), flush=True)
    report["flops"] = flops
    table = _table(report["results"])
    print("\n" + table, flush=True)
    report["table"] = table
    bench_report.write("stylenerf", report, Path(args.out) if args.out else None)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    bench_report.run_and_exit(main)

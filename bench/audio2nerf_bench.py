"""audio2nerf benchmark: training throughput and peak memory for the seed guide's configuration,
and a wall-clock-limited training run on the processed sample data with held-out error over time.

    python bench/audio2nerf_bench.py --device cuda                    # throughput (seed guide config)
    python bench/audio2nerf_bench.py --device cuda --train-minutes 4  # + train on data/sample

Throughput: one process (world size 1), audio_dim 256, nerf_dim 512, DeepSpeed ZeRO-2, bf16 on
GPUs (fp32 on CPU), batch 16 sequences of 5 frames (80 mel windows) per step with 4 frames
rendered at 256 px through a random-init paper256 generator (w_dim 512) for LipaintNet; the
seed guide's 8 GPUs run this per GPU. Samples are mel windows (sequence frames) per second.
Train mode: preprocesses data/sample (synthetic morphable model) through the launcher unless
--processed is given, uses --generator or a random-init `tiny` generator, trains in this process
and evaluates the held-out clip tails every --eval-every steps. Prints a table, writes JSON.
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


def _init(device: str):
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29631"))
    from launcher.runtime import distributed

    return distributed.init(device)


def _config(args, **extra):
    from nerffacespeech.configs.audio2nerf import TrainConfig

    values = {"audio_dim": 256, "nerf_dim": 512, "lr": 1e-4, "batch_per_gpu": args.batch, "seq_len": 5,
              "render_batch": args.render_batch, "zero_stage": 2, "precision": "auto", **extra}
    cfg, problems = TrainConfig.parse(values)
    if cfg is None:
        raise SystemExit(f"bad config: {problems}")
    return cfg.resolved(1)


def throughput(args, env) -> dict:
    """Steps/s of the objective on synthetic sequences (shapes of the processed data)."""
    import torch

    from nerffacespeech.models.audio2nerf import generator_source
    from nerffacespeech.models.audio2nerf.deform import RayDeformation
    from nerffacespeech.models.audio2nerf.face import load_face_basis
    from nerffacespeech.train.a2n_objective import Objective, Renderer, Weights
    from nerffacespeech.train.engine import EngineSpec, make_trainable, resolve_precision

    from nerffacespeech.configs.stylenerf import PRESETS

    cfg = _config(args, nerf_dim=PRESETS[args.preset].model.w_dim)     # 512 for the paper presets
    generator = generator_source.build({"kind": "random", "preset": args.preset, "seed": 0}, env.device)
    face = load_face_basis("synthetic")
    renderer = Renderer(generator, RayDeformation(face, cfg.deform_sigma, cfg.deform_vertices).to(env.device),
                        face.to(env.device))
    precision = resolve_precision(cfg.precision, env.device)
    spec = EngineSpec("deepspeed", 2, precision, cfg.lr, tuple(cfg.betas), cfg.eps, cfg.batch_per_gpu, 1)
    factory = lambda: Objective(cfg.model, 8, cfg.nerf_dim, cfg.latent_lr_mult)
    trainable = make_trainable("A2N", factory(), factory, spec, env)
    weights = Weights.of(cfg)
    b, s, r, dev = cfg.batch_per_gpu, cfg.seq_len, generator.cfg.resolution, env.device
    g = torch.Generator(device="cpu").manual_seed(0)
    batch = {"mel": torch.randn(b, s, 80, 16, generator=g), "exp": torch.randn(b, s, 64, generator=g) * 0.3,
             "blink": torch.rand(b, s, generator=g), "ref": torch.zeros(b, 64),
             "clip": torch.randint(8, (b,), generator=g), "angles": torch.zeros(b, 2),
             "frame": torch.rand(b, 3, r, r, generator=g) * 2 - 1, "mouth": torch.ones(b, 1, r, r)}
    batch = {k: v.to(dev) for k, v in batch.items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync()
            start = time.perf_counter()
        loss, _ = trainable(batch, renderer, weights)
        trainable.backward(loss)
        trainable.step()
    sync()
    seconds = time.perf_counter() - start
    return {"preset": args.preset, "precision": precision, "batch_sequences": b, "seq_len": s,
            "render_batch": cfg.render_batch, "resolution": r, "steps": args.steps,
            "steps_per_s": args.steps / seconds, "samples_per_s": args.steps * b * s / seconds,
            "rendered_frames_per_s": args.steps * cfg.render_batch / seconds,
            "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None}


def preprocess_sample(folder: Path) -> Path:
    """data/sample through the preprocess + merge stages (synthetic morphable model), via the launcher."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "prep.yaml"
    spec.write_text(f"""name: prep
run_root: {folder}/runs
local: {{device: auto, max_parallel: 2}}
stages:
  preprocess: {{task: preprocess, array: 2, config: &p {{data_dir: {ROOT}/data/sample, resolution: 64,
                fit3dmm: {{bfm_path: synthetic}}}}}}
  merge: {{task: preprocess.merge, after: [preprocess], config: *p}}
""")
    out = subprocess.run([sys.executable, "-m", "launcher", "submit", str(spec)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    run = Path(next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("directory ")))
    return run / "data" / "processed"


def train(args, env) -> list[dict]:
    """Train on the processed sample data for --train-minutes; held-out errors over time."""
    from nerffacespeech.train.a2n_evaluate import evaluate
    from nerffacespeech.train.audio2nerf import Audio2NeRFTraining

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="a2n-bench-"))
    processed = Path(args.processed) if args.processed else preprocess_sample(workdir)
    small = {} if args.generator else {"nerf_dim": 128}
    cfg = _config(args, generator=args.generator or "random", render_batch=min(args.render_batch, args.batch),
                  **small)
    training = Audio2NeRFTraining(cfg, env, processed, cfg.generator)
    history, start, step = [], time.perf_counter(), 0
    while True:
        if step % args.eval_every == 0:
            training.sync_export()
            results, _ = evaluate(training.export, training.latents, training.data, training.renderer)
            history.append({"step": step, "seconds": time.perf_counter() - start, **results})
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in history[-1].items()}),
                  flush=True)
            if time.perf_counter() - start > args.train_minutes * 60:
                return history
        training.step(step)
        step += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="paper256", help="generator architecture for throughput (w_dim 512)")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--render-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--train-minutes", type=float, default=0.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--processed", help="processed dataset (default: preprocess data/sample)")
    p.add_argument("--generator", help="stylenerf checkpoint (default: random-init tiny)")
    p.add_argument("--workdir", help="where the sample data is preprocessed (default: a temp dir)")
    p.add_argument("--output", default=str(ROOT / "bench" / "results" / "audio2nerf.json"))
    args = p.parse_args()
    env = _init(args.device)
    report = {**bench_report.metadata(vars(args)), "device": str(env.device)}
    report["throughput"] = throughput(args, env)
    t = report["throughput"]
    print(f"{'preset':10} {'prec':5} {'batch':>5} {'render':>6} {'steps/s':>8} {'samples/s':>10} "
          f"{'frames/s':>9} {'peak GiB':>9}")
    print(f"{t['preset']:10} {t['precision']:5} {t['batch_sequences']:5d} {t['render_batch']:6d} "
          f"{t['steps_per_s']:8.2f} {t['samples_per_s']:10.1f} {t['rendered_frames_per_s']:9.1f} "
          f"{t['peak_memory_gib'] if t['peak_memory_gib'] is not None else float('nan'):9.2f}", flush=True)
    if args.train_minutes > 0:
        report["training"] = train(args, env)
    bench_report.write("audio2nerf", report, Path(args.output))

if __name__ == "__main__":
    bench_report.run_and_exit(main)

"""Does adaptive discriminator augmentation help on a small face set? `augment: none` against
`augment: ada`, same data, same seeds, same images shown.

    python bench/ada_bench.py --device cuda --budget 120 --out bench/results/ada     # GPU: a few minutes
    python bench/ada_bench.py --device cpu --budget 30 --eval-every 4 --out /tmp/ada   # a CPU check

Two sets (`--sets`): `lfw`, the 100 faces of data/sample/faces/lfw, every `--holdout`-th held
out; `clips`, a larger one made here from the sample clips' 776 frames, each `--copies` times
under its own random pose jitter (kornia), whole clips held out. First the cost: ms per step at
a fixed p of 0, 0.2, 0.6 and 1. Then, per set, both runs train in lockstep in one process (one
step of each in turn), so they have seen the same number of images whenever the `--budget` in
seconds (or `--kimg`) ends them. Every `--eval-every` steps: SWD of the EMA generator against
the held-out images and against the training images, D's mean score of training and held-out
images (the gap grows as D memorises), r_t = E[sign(D(real))] and p. At the end:
tables, the JSON (`<out>/ada.json`: config, machine, the curves, the final numbers, the step
costs) and the sample grids `<out>/grid-<set>-<mode>.png` (fixed seeds and yaws: no rotated or
colour-shifted face may appear there; augmentation must not leak into G).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import report as bench_report

ROOT = bench_report.REPO
MODES = ("none", "ada")


def split(faces: Path, holdout: int, into: Path) -> tuple[Path, Path]:
    """Symlink folders `train/` and `heldout/` (every `holdout`-th image of the sorted list)."""
    from nerffacespeech.train.images import list_images

    train, held = into / "train", into / "heldout"
    train.mkdir(parents=True)
    held.mkdir()
    for i, ref in enumerate(list_images(faces)):
        if ref.member is not None:
            raise SystemExit(f"{faces}: give a folder of images, not a zip")
        target = held if i % holdout == 0 else train
        os.symlink(os.path.abspath(ref.path), target / f"{i:05d}{Path(ref.path).suffix}")
    return train, held


def training_for(args, data: Path, mode: str, p: float = 0.0):
    """A StyleNeRFTraining of the preset (world size 1, full resolution from step 0), seeded by `--seed`."""
    from launcher.runtime import distributed
    from nerffacespeech.configs.stylenerf import TrainConfig
    from nerffacespeech.train.stylenerf import RunState, StyleNeRFTraining

    config = {"data": str(data), "preset": args.preset, "seed": args.seed, "engine": "ddp", "zero_stage": 0,
              "precision": args.precision, "curriculum_kimg": None, "compile": False, "cuda_graphs": False,
              "workers": 0, "augment": mode, "augment_p": p, "ada_kimg": args.ada_kimg, "ada_target": args.ada_target,
              "model": {"resolution": args.resolution} if args.resolution else {}}
    if args.batch:
        config.update(batch_per_gpu=args.batch, batch_total=args.batch)
    parsed, problems = TrainConfig.parse(config)
    if problems:
        raise SystemExit(f"bad config: {problems}")
    env = distributed.init(args.device)
    return StyleNeRFTraining(parsed.resolved(env.world_size), env), RunState.fresh(), env


def step_cost(args, data: Path) -> list[dict]:
    """Seconds per training step with `augment: fixed` at several p (p = 0 is `none`'s cost):
    what augmentation adds to a step, from `--cost-steps` timed steps after 2 warm-up steps."""
    import torch

    from nerffacespeech.train import images as image_data

    rows = []
    for p in (0.0, 0.2, 0.6, 1.0):
        training, run, env = training_for(args, data, "fixed" if p else "none", p)
        dataset = image_data.ImageDataset(data, training.model_cfg.resolution)
        sampler = image_data.PositionSampler(len(dataset), 0, 1, training.cfg.batch_per_gpu, args.seed, True)
        batches = image_data.batches(dataset, sampler, 0, False)
        for _ in range(2):
            training.step(batches, run)
        sync = torch.cuda.synchronize if env.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(args.cost_steps):
            training.step(batches, run)
        sync()
        rows.append({"p": p, "s_per_step": (time.perf_counter() - start) / args.cost_steps})
        print(f"  step cost at p {p:.1f}: {1000 * rows[-1]['s_per_step']:.1f} ms", flush=True)
    return rows


def evaluate(training, suites: dict, z_dim: int) -> dict:
    """SWD of the EMA generator against each suite's images, and D's mean score of those images."""
    import torch

    with torch.random.fork_rng(devices=[training.env.device] if training.env.device.type == "cuda" else []):
        point = {f"swd_{name}": suite.evaluate(training.sample, z_dim)["swd"] for name, suite in suites.items()}
    point.update({f"d_{name}": discriminator_score(training, suite.dataset, len(suites["heldout"].dataset))
                  for name, suite in suites.items()})
    point["d_gap"] = point["d_train"] - point["d_heldout"]
    return point


def discriminator_score(training, dataset, count: int) -> float:
    """D's mean raw output over the first `count` images of `dataset`, un-augmented: the ADA
    paper's overfitting signal is this score on training images drifting above held-out ones."""
    import torch

    from nerffacespeech.train import images as image_data

    total, batch = 0.0, training.cfg.batch_per_gpu
    with torch.no_grad(), training.d.frozen() as d_fn:
        for start in range(0, count, batch):
            images = torch.stack([dataset[i, False] for i in range(start, min(start + batch, count))])
            total += float(d_fn(image_data.to_training(images, training.env.device)).float().sum())
    return total / count


def save_grid(images, path: Path) -> None:
    from launcher.atomic import write_bytes
    from nerffacespeech.train.stylenerf import grid_png

    write_bytes(path, grid_png(images)[1])


def jittered_clips(clips: Path, copies: int, resolution: int, holdout: int, into: Path, seed: int) -> tuple[Path, Path]:
    """A larger set from the sample clips: every frame `copies` times, each under its own small
    random similarity transform (rotation +-5 degrees, scale 0.95-1.05, shift 3 %: pose jitter
    around the aligned face) by kornia, written as PNG at `resolution`. Whole clips are held out
    (every `holdout`-th clip), so no held-out frame has a jittered twin in training."""
    import kornia.augmentation as K
    import numpy as np
    import torch
    from PIL import Image

    jitter = K.RandomAffine(degrees=5.0, translate=(0.03, 0.03), scale=(0.95, 1.05), padding_mode="reflection",
                            p=1.0)
    torch.manual_seed(seed)
    train, held = into / "train", into / "heldout"
    train.mkdir(parents=True)
    held.mkdir()
    folders = sorted(d for d in clips.glob("*/*") if d.is_dir())
    for c, folder in enumerate(folders):
        frames = sorted(folder.glob("*.jpg"))
        images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize(
            (resolution, resolution), Image.LANCZOS))).permute(2, 0, 1) for f in frames]).float() / 255
        target = held if c % holdout == 0 else train
        for k in range(copies):
            out = (jitter(images) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for f, image in zip(frames, out):
                Image.fromarray(image).save(target / f"{c:02d}-{f.stem}-{k}.png")
    return train, held


def compare(args, name: str, train_dir: Path, held_dir: Path, out: Path) -> dict:
    """none and ada in lockstep on one set: the curves, the final numbers, the grids."""
    import torch

    from nerffacespeech.metrics.evaluate import MetricSuite
    from nerffacespeech.train import images as image_data

    runs = {}
    for mode in MODES:
        training, run, env = training_for(args, train_dir, mode)
        res, batch = training.model_cfg.resolution, training.cfg.batch_per_gpu
        dataset = image_data.ImageDataset(train_dir, res)
        sampler = image_data.PositionSampler(len(dataset), 0, 1, batch, args.seed, training.cfg.mirror)
        suites = {split_name: MetricSuite(("swd",), image_data.ImageDataset(folder, res), args.metric_images, batch,
                                          0, 1, env.device)
                  for split_name, folder in (("heldout", held_dir), ("train", train_dir))}
        runs[mode] = {"training": training, "run": run, "batches": image_data.batches(dataset, sampler, 0, False),
                      "suites": suites, "seconds": 0.0, "curve": [], "window": []}
    print(f"ada_bench {name}: {len(dataset)} training and {len(suites['heldout'].dataset)} held-out images at "
          f"{res} px, batch {batch}, preset {args.preset}, device {env.device}", flush=True)

    def record(step: int) -> None:
        for mode, r in runs.items():
            point = {"step": step, "kimg": r["run"].progress["images"] / 1000,
                     **evaluate(r["training"], r["suites"], r["training"].model_cfg.z_dim)}
            window = r.pop("window")
            point["rt"] = sum(window) / len(window) if window else None
            point["p"] = r["training"].ada.p
            r["curve"].append(point)
            r["window"] = []
            rt = "-" if point["rt"] is None else f"{point['rt']:.3f}"
            print(f"  {mode:4s} step {step:6d} kimg {point['kimg']:7.2f} swd held-out {point['swd_heldout']:.4f} "
                  f"train {point['swd_train']:.4f} D train-held-out {point['d_gap']:+.3f} r_t {rt} "
                  f"p {point['p']:.3f}", flush=True)

    record(0)
    step, started = 0, time.perf_counter()
    while True:
        for r in runs.values():
            t = time.perf_counter()
            logs = r["training"].step(r["batches"], r["run"])
            r["window"].append(float(logs["rt"]))
            if env.device.type == "cuda":
                torch.cuda.synchronize(env.device)
            r["seconds"] += time.perf_counter() - t
        step += 1
        done = (args.kimg and runs["none"]["run"].progress["images"] >= args.kimg * 1000) or \
            (not args.kimg and time.perf_counter() - started >= args.budget)
        if step % args.eval_every == 0 or done:
            record(step)
        if done:
            break

    grid = torch.Generator().manual_seed(args.seed + 7)
    z = torch.randn(16, training.model_cfg.z_dim, generator=grid).to(env.device)
    yaw = torch.linspace(-1, 1, 16) * training.model_cfg.yaw_std
    angles = torch.stack([yaw, torch.zeros_like(yaw)], 1).to(env.device)
    results = {}
    for mode, r in runs.items():
        save_grid(r["training"].sample(z, angles), out / f"grid-{name}-{mode}.png")
        last = r["curve"][-1]
        late = r["curve"][len(r["curve"]) // 2:]
        rts = [c["rt"] for c in late if c["rt"] is not None]
        best = min(c["swd_heldout"] for c in r["curve"])
        results[mode] = {"images": len(dataset), "steps": step, "kimg": last["kimg"],
                         "swd_heldout": last["swd_heldout"], "swd_train": last["swd_train"],
                         "best_swd_heldout": best, "rt_late": sum(rts) / len(rts) if rts else None,
                         "d_gap_late": sum(c["d_gap"] for c in late) / len(late),
                         "swd_gap_late": sum(c["swd_heldout"] - c["swd_train"] for c in late) / len(late),
                         "p": last["p"], "s_per_step": r["seconds"] / step, "curve": r["curve"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sets", default="lfw,clips", help="lfw (the faces), clips (jittered clip frames)")
    parser.add_argument("--faces", default=str(ROOT / "data" / "sample" / "faces" / "lfw"))
    parser.add_argument("--clips", default=str(ROOT / "data" / "sample" / "images"))
    parser.add_argument("--copies", type=int, default=4, help="jittered copies of each clip frame")
    parser.add_argument("--holdout", type=int, default=4, help="every N-th image (clip) is held out")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=0, help="override the preset's output size")
    parser.add_argument("--batch", type=int, default=0, help="images per step (0: the preset's)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--budget", type=float, default=120, help="seconds of training per set, both runs together")
    parser.add_argument("--kimg", type=float, default=0, help="stop at this many kimg (0: the budget decides)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between SWD evaluations")
    parser.add_argument("--metric-images", type=int, default=256)
    parser.add_argument("--ada-kimg", type=float, default=20, help="ADA speed (the paper's 500 is for long runs)")
    parser.add_argument("--ada-target", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cost-steps", type=int, default=16, help="timed steps per p of the cost rows (0: none)")
    parser.add_argument("--cost-only", action="store_true", help="time the steps, train no comparison")
    parser.add_argument("--out", default=str(bench_report.RESULTS / "ada"))
    args = parser.parse_args()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")

    import torch

    from nerffacespeech.configs.stylenerf import PRESETS

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resolution = args.resolution or PRESETS[args.preset].model.resolution
    results, cost = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            folder = Path(tmp) / name
            if name == "lfw":
                train_dir, held_dir = split(Path(args.faces), args.holdout, folder)
            elif name == "clips":
                train_dir, held_dir = jittered_clips(Path(args.clips), args.copies, resolution, args.holdout, folder,
                                                     args.seed)
            else:
                raise SystemExit(f"unknown set {name!r} (lfw, clips)")
            if args.cost_steps and not cost:
                cost = step_cost(args, train_dir)
            if not args.cost_only:
                results[name] = compare(args, name, train_dir, held_dir, out)
    rows = [[name, mode, v["images"], f"{v['kimg']:.2f}", f"{v['swd_heldout']:.4f}", f"{v['best_swd_heldout']:.4f}",
             f"{v['swd_train']:.4f}", "-" if v["rt_late"] is None else f"{v['rt_late']:.3f}",
             f"{v['d_gap_late']:+.3f}", f"{v['p']:.3f}",
             f"{1000 * v['s_per_step']:.1f}"] for name, modes in results.items() for mode, v in modes.items()]
    if rows:
        print(bench_report.table(rows, ("set", "augment", "images", "kimg", "SWD held-out", "best", "SWD train",
                                        "r_t (late half)", "D train - held-out (late half)", "p", "ms/step")))
    if cost:
        base = cost[0]["s_per_step"]
        print(bench_report.table([(f"{c['p']:.1f}", f"{1000 * c['s_per_step']:.1f}",
                                   f"{100 * (c['s_per_step'] / base - 1):+.0f}%") for c in cost],
                                 ("p (fixed)", "ms/step", "vs p = 0")))
    bench_report.write("ada", {**bench_report.metadata(vars(args), "kornia", "numpy"), "results": results,
                               "step_cost": cost}, out / "ada.json")
    if results:
        print(f"sample grids: {out}/grid-<set>-<mode>.png", flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""Preprocessing throughput: alignment and audio features (items/s per core), 3DMM fitting (frames/s).

    python bench/preprocess_bench.py [--out FILE.json] [--device cpu|cuda]
                                     [--parts alignment,warp,audio,fit3dmm,reference,photometric]

Runs on the bundled sample data and a synthetic BFM09-layout model, so it needs no downloads.
`warp` times the FFHQ crop's warp alone with OpenCV (what `preprocess/align.py` uses) and with
kornia's `warp_affine` on the same frames and transforms (issue 21: keep the faster), and how
far apart their crops are.
Fitting (`fit3dmm`: the default `lm` solver) fits clips of a synthetic face turning and talking,
after one warm-up clip, and reports frames/s and landmark error (px at 224, exact landmarks);
`reference` fits one clip with L-BFGS for 1000 rigid + 500 non-rigid iterations on the anchors
and 500 per batch of frames, and the same clip with the default solver: the error the fast path
must match. `photometric` (issue 22) renders the clips (nvdiffrast where it runs, else the
pure-PyTorch rasterizer) and fits them landmarks-only, then with the landmark fit refined
photometrically (`--photometric-configs`, appearance steps:geometry steps:step size each), and
with the earlier L-BFGS photometric fit (`--photometric-lbfgs`), once on exact landmarks and once
on landmarks with detector-like noise (`--landmark-noise` px at 224): frames/s, landmark error
against the fitted and against the exact landmarks, photometric error; `--photometric-profile`
adds a torch.profiler pass over one refinement (kernels per Adam step, GPU busy fraction, top
operators).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

import report as bench_report
from nerffacespeech.configs.preprocess import FitConfig
from nerffacespeech.preprocess import bfm, fit3dmm, renderers, template

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
REFERENCE = FitConfig(solver="lbfgs", rigid_steps=1000, nonrigid_steps=500, warm_steps=500)
PARTS = ("alignment", "warp", "audio", "fit3dmm", "reference", "photometric")


def bench_alignment(resolution: int = 256) -> dict:
    """Load + detect + 68 landmarks + FFHQ crop, one process, one thread."""
    from nerffacespeech.preprocess import align, images, landmarks

    paths = sorted((SAMPLE / "images" / "astronaut" / "00001").glob("*.jpg"))[:40]
    marker = landmarks.DlibLandmarker()
    start = time.perf_counter()
    for path in paths:
        frame = images.load_frame(path, 64)
        face = landmarks.single_face(marker.detect([frame])[0], marker.min_score)
        align.align_faces([frame], face.landmarks[None], resolution)
    seconds = time.perf_counter() - start
    return {"items": len(paths), "seconds": seconds, "items_per_s_per_core": len(paths) / seconds,
            "landmarker": marker.name, "resolution": resolution}


def bench_warp(resolution: int = 256, repeats: int = 5) -> dict:
    """The FFHQ crop's warp of 40 sample frames: OpenCV per frame against kornia on the batch
    (its uint8 <-> float conversions included), one thread; seconds per crop and the largest and
    mean pixel difference of the two crops (0-255)."""
    import cv2
    from kornia.geometry.transform import warp_affine

    from nerffacespeech.preprocess import align, images, landmarks

    paths = sorted((SAMPLE / "images" / "astronaut" / "00001").glob("*.jpg"))[:40]
    marker = landmarks.DlibLandmarker()
    frames = [images.load_frame(path, 64) for path in paths]
    faces = np.stack([landmarks.single_face(marker.detect([f])[0], marker.min_score).landmarks for f in frames])
    transforms = align.quad_transforms(align.ffhq_quads(faces), resolution)
    size = (resolution, resolution)

    def opencv() -> np.ndarray:
        return np.stack([cv2.warpAffine(f, t, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                         for f, t in zip(frames, transforms)])

    def kornia() -> np.ndarray:
        batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
        out = warp_affine(batch, torch.from_numpy(transforms).float(), size, mode="bilinear",
                          padding_mode="reflection", align_corners=False)
        return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    timings = {}
    for name, warp in (("opencv", opencv), ("kornia", kornia)):
        warp()                                               # first call: imports, allocations
        start = time.perf_counter()
        for _ in range(repeats):
            crops = warp()
        timings[name] = ((time.perf_counter() - start) / (repeats * len(frames)), crops)
    diff = np.abs(timings["opencv"][1].astype(np.int16) - timings["kornia"][1].astype(np.int16))
    return {"crops": len(frames), "resolution": resolution, "opencv_ms_per_crop": 1e3 * timings["opencv"][0],
            "kornia_ms_per_crop": 1e3 * timings["kornia"][0], "max_pixel_difference": int(diff.max()),
            "mean_pixel_difference": float(diff.mean())}


def bench_audio() -> dict:
    """Load + check + log-mel + frame windows of each sample clip, repeated."""
    from nerffacespeech.preprocess import audio

    wavs = sorted((SAMPLE / "audio").glob("*/*.wav"))
    audio.log_mel(np.zeros(16000, np.float32))            # librosa import and filter bank once
    start, seconds_of_speech, items = time.perf_counter(), 0.0, 0
    for _ in range(10):
        for wav in wavs:
            speech = audio.load_speech(wav)
            n = round(len(speech) / 640)
            audio.frame_windows(audio.log_mel(audio.fit_to_frames(speech, n)), n)
            seconds_of_speech += len(speech) / 16000
            items += 1
    seconds = time.perf_counter() - start
    return {"items": items, "seconds": seconds, "items_per_s_per_core": items / seconds,
            "speech_seconds_per_s": seconds_of_speech / seconds}


def synthetic_clip(model, face, frames: int, seed: int, device: str, render: bool, noise_px: float = 0.0):
    """A face turning (yaw ±17°) and talking (8 expression coefficients) under its own skin tone and
    light (texture and lighting coefficients the landmark fit leaves at zero): its crops, its landmarks
    with Gaussian noise of `noise_px` (px at 224, per coordinate; a detector's error) and exact."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames) / 25.0
    true = torch.zeros(frames, 257)
    true[:, :80] = torch.randn(80, generator=g) * 0.5
    true[:, 144:224] = torch.randn(80, generator=g) * 0.5
    true[:, 227:254] = torch.randn(27, generator=g) * 0.1
    freq, phase = 0.5 + 1.5 * torch.rand(8, generator=g), 6.3 * torch.rand(8, generator=g)
    true[:, 80:88] = torch.sin(2 * torch.pi * freq * t[:, None] + phase)
    true[:, 224], true[:, 225], true[:, 256] = 0.1 * torch.cos(t), 0.3 * torch.sin(t), 0.1
    true = true.to(device)
    with torch.no_grad():
        marks = face.landmarks(bfm.split(true)).cpu().numpy()
        crops = np.zeros((frames, face.size, face.size, 3), np.uint8)
        if render:
            crops = (face.render(bfm.split(true))[0].cpu().numpy() * 255).round().astype(np.uint8)
    noise = torch.randn(marks.shape, generator=g).numpy() * noise_px * face.size / 224
    return crops, (marks + noise).astype(np.float32), marks


def bench_fitting(model, device: str, cfg: FitConfig, clips: int, frames: int, render: bool = False,
                  noise_px: float = 0.0) -> dict:
    """Fit `clips` clips of `frames` frames each after a short warm-up clip; frames/s, landmark
    error against the landmarks fitted and against the exact ones, and with `render` the
    photometric error of the fitted faces against the crops."""
    face = fit3dmm.FaceModel(model, cfg.fit_size, renderers.choose(cfg.renderer, device) if render else None)
    data = [synthetic_clip(model, face, frames, seed, device, render, noise_px) for seed in range(clips)]
    warm_up = dataclasses.replace(cfg, rigid_steps=5, nonrigid_steps=5, warm_steps=5, appearance_steps=5,
                                  photometric_steps=5)   # the same kernels, allocator and caches
    fit3dmm.ClipFitter(model, warm_up, device).fit(*synthetic_clip(model, face, 16, clips, device, render)[:2])
    fitter = fit3dmm.ClipFitter(model, cfg, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    results = [fitter.fit(crops, marks) for crops, marks, _ in data]
    seconds = time.perf_counter() - start                   # fit() returns host arrays: synced
    errors = np.concatenate([r.landmark_error for r in results])
    out = {"clips": clips, "frames_per_clip": frames, "seconds": seconds,
           "frames_per_s": clips * frames / seconds, "device": device, "solver": cfg.solver,
           "photometric": cfg.photometric, "renderer": fitter.face.rasterizer.name if cfg.photometric else None,
           "config": dataclasses.asdict(cfg), "landmark_noise_px": noise_px,
           "vertices": model.n_vertices, "triangles": int(model.triangles.shape[0]),
           "landmark_error_px_mean": float(errors.mean()), "landmark_error_px_max": float(errors.max()),
           "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
    with torch.no_grad():
        fitted = [bfm.split(torch.as_tensor(r.coeffs, device=device)) for r in results]
        exact = [(face.landmarks(c) - torch.as_tensor(marks, device=device)).norm(dim=-1).mean(-1)
                 for c, (_, _, marks) in zip(fitted, data)]
        out["exact_landmark_error_px_mean"] = float(torch.cat(exact).mean())
        if render:
            photo = [face.photometric_error(c, torch.as_tensor(crops, device=device).float() / 255)
                     for c, (crops, _, _) in zip(fitted, data)]
            out["photometric_error_mean"] = float(torch.cat(photo).mean())
    return out


def photometric_rows(model, args) -> dict:
    """Landmarks only, the photometric refinements of `--photometric-configs` and (optionally) the
    L-BFGS photometric fit, on the same rendered clips, with exact and with noisy landmarks."""
    renderer = "nvdiffrast" if _nvdiffrast_runs(args.device) else "torch"
    runs = {"landmarks_only": FitConfig()}
    for spec in args.photometric_configs.split(","):
        appearance, geometry, lr = spec.split(":")
        runs[f"refined_{spec}"] = FitConfig(photometric=True, renderer=renderer, appearance_steps=int(appearance),
                                            photometric_steps=int(geometry), photometric_lr=float(lr))
    if args.photometric_lbfgs:
        runs["lbfgs"] = FitConfig(solver="lbfgs", photometric=True, renderer=renderer)
    out = {"renderer": renderer}
    for noise in sorted({0.0, args.landmark_noise}):
        for name, cfg in runs.items():
            out[f"{name}_noise{noise:g}"] = r = bench_fitting(model, args.device, dataclasses.replace(
                cfg, renderer=renderer), args.photometric_clips, args.frames, render=True, noise_px=noise)
            show(*row(f"{name}, {renderer}, noise {noise:g} px", r))
    return out


def _nvdiffrast_runs(device: str) -> bool:
    try:
        renderers.nvdiffrast(device)
        return True
    except renderers.RendererUnavailable as why:
        show("nvdiffrast", f"not used: {why}")
        return False


def photometric_profile(model, args) -> dict:
    """torch.profiler over one refinement of one clip (the first of `--photometric-configs`):
    kernels and operators per Adam step, how busy the GPU is, the operators that take its time."""
    from torch.profiler import ProfilerActivity, profile

    appearance, geometry, lr = args.photometric_configs.split(",")[0].split(":")
    cfg = FitConfig(photometric=True, renderer="auto", appearance_steps=int(appearance),
                    photometric_steps=int(geometry), photometric_lr=float(lr))
    face = fit3dmm.FaceModel(model, cfg.fit_size)
    crops, marks, _ = synthetic_clip(model, face, args.frames, 0, args.device, True)
    fitter = fit3dmm.ClipFitter(model, cfg, args.device)
    fitter.fit(crops, marks)                                  # warm: allocator, kernels
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        fitter.fit(crops, marks)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    steps = cfg.appearance_steps + cfg.photometric_steps * -(-args.frames // cfg.photometric_batch)
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    top = sorted(events, key=lambda e: e.device_time_total if args.device == "cuda" else e.cpu_time_total,
                 reverse=True)[:10]
    out = {"frames": args.frames, "wall_s": wall, "adam_steps": steps, "kernels": len(kernels),
           "kernels_per_step": len(kernels) / steps, "gpu_busy_s": busy, "gpu_busy_fraction": busy / wall,
           "top": [{"op": e.key, "device_ms": e.device_time_total / 1e3, "cpu_ms": e.cpu_time_total / 1e3,
                    "calls": e.count} for e in top]}
    show("photometric profile", f"{args.frames} frames in {wall:.2f} s, {steps} Adam steps, "
         f"{out['kernels_per_step']:.0f} kernels/step, GPU busy {out['gpu_busy_fraction']:.0%}")
    for t in out["top"]:
        show(f"  {t['op'][:54]}", f"{t['device_ms']:.1f} ms GPU, {t['cpu_ms']:.1f} ms CPU, {t['calls']} calls")
    return out


def row(name: str, r: dict) -> tuple[str, str]:
    photo = f", photometric {r['photometric_error_mean']:.4f}" if "photometric_error_mean" in r else ""
    return (f"3DMM {name} ({r['device']}, {r['clips']}x{r['frames_per_clip']} frames)",
            f"{r['frames_per_s']:.2f} frames/s, err {r['landmark_error_px_mean']:.3f} px "
            f"(max {r['landmark_error_px_max']:.3f}, exact {r['exact_landmark_error_px_mean']:.3f}){photo}"
            + (f", peak {r['peak_allocated_gib']:.1f} GiB" if r.get("peak_allocated_gib") else ""))


def show(name: str, value: str) -> None:
    """One row of the table, printed as it comes (a slow later part cannot hide earlier ones)."""
    print(f"{name:<56}  {value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/preprocess-<accelerator>.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=64, help="frames per clip (250: a 10 s video)")
    parser.add_argument("--reference-frames", type=int, default=64)
    parser.add_argument("--photometric-clips", type=int, default=1, help="rendered clips (of --frames)")
    parser.add_argument("--photometric-configs", default="100:100:0.01",
                        help="refinements to compare: appearance steps:geometry steps:step size, comma-separated")
    parser.add_argument("--photometric-lbfgs", action="store_true", help="also the L-BFGS photometric fit (slow)")
    parser.add_argument("--photometric-profile", action="store_true", help="profile one refinement")
    parser.add_argument("--landmark-noise", type=float, default=1.0,
                        help="the noisy rows' landmark noise, px at 224 per coordinate")
    parser.add_argument("--photometric-grid", type=int, default=40,
                        help="the synthetic mesh's grid for the photometric rows (236: BFM09's ~35k vertices)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    torch.set_num_threads(1)
    model = bfm.from_arrays(template.build("random", grid=40, seed=0), args.device)
    results = {"device": args.device, "threads": 1}
    if "alignment" in parts:
        results["alignment"] = r = bench_alignment()
        show("alignment (load+detect+68 pts+crop)", f"{r['items_per_s_per_core']:.1f} items/s/core")
    if "warp" in parts:
        results["warp"] = r = bench_warp()
        show("FFHQ crop warp, OpenCV (used) / kornia", f"{r['opencv_ms_per_crop']:.3f} / {r['kornia_ms_per_crop']:.3f} "
             f"ms per crop; crops differ by <= {r['max_pixel_difference']} (mean {r['mean_pixel_difference']:.2f})")
    if "audio" in parts:
        results["audio"] = r = bench_audio()
        show("audio (load+mel+windows, ~3 s clips)", f"{r['items_per_s_per_core']:.1f} items/s/core")
    if "fit3dmm" in parts:
        results["fit3dmm"] = r = bench_fitting(model, args.device, FitConfig(), args.clips, args.frames)
        show(*row("fit3dmm", r))
    if "reference" in parts:
        results["reference"] = r = bench_fitting(model, args.device, REFERENCE, 1, args.reference_frames)
        results["reference_clip_default"] = d = bench_fitting(model, args.device, FitConfig(), 1, args.reference_frames)
        show(*row("reference (lbfgs 1000+500)", r))
        show(*row("same clip, default", d))
    if "photometric" in parts:
        model = bfm.from_arrays(template.build("random", grid=args.photometric_grid, seed=0), args.device)
        if args.photometric_profile:   # first: it says where the time goes even if the rows run out of time
            results["photometric_profile"] = photometric_profile(model, args)
        results["photometric"] = photometric_rows(model, args)
    bench_report.write("preprocess", {**bench_report.metadata({k: str(v) for k, v in vars(args).items()}), **results},
                       args.out)


if __name__ == "__main__":
    bench_report.run_and_exit(main)

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
must match; `photometric` adds the rendered skin-masked photometric loss (L-BFGS, default
steps), with nvdiffrast (`--photometric-clips` clips of `--frames` frames; skipped where it does
not run) and with the pure-PyTorch rasterizer (one clip of `--photometric-frames`), then fits
the nvdiffrast clips with the landmark-only default: landmark and photometric error of both.
"""
from __future__ import annotations

import argparse
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


def synthetic_clip(model, face, frames: int, seed: int, device: str, render: bool):
    """A face turning (yaw ±17°) and talking (8 expression coefficients), its crops and landmarks."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames) / 25.0
    true = torch.zeros(frames, 257)
    true[:, :80] = torch.randn(80, generator=g) * 0.5
    freq, phase = 0.5 + 1.5 * torch.rand(8, generator=g), 6.3 * torch.rand(8, generator=g)
    true[:, 80:88] = torch.sin(2 * torch.pi * freq * t[:, None] + phase)
    true[:, 224], true[:, 225], true[:, 256] = 0.1 * torch.cos(t), 0.3 * torch.sin(t), 0.1
    true = true.to(device)
    with torch.no_grad():
        marks = face.landmarks(bfm.split(true)).cpu().numpy()
        crops = np.zeros((frames, face.size, face.size, 3), np.uint8)
        if render:
            crops = (face.render(bfm.split(true))[0].cpu().numpy() * 255).round().astype(np.uint8)
    return crops, marks


def bench_fitting(model, device: str, cfg: FitConfig, clips: int, frames: int, render: bool = False) -> dict:
    """Fit `clips` clips of `frames` frames each after a short warm-up clip; frames/s and landmark
    error, and with `render` the photometric error of the fitted faces against the crops."""
    face = fit3dmm.FaceModel(model, cfg.fit_size, renderers.choose("auto", device) if render else None)
    data = [synthetic_clip(model, face, frames, seed, device, render) for seed in range(clips)]
    warm_up = FitConfig(solver=cfg.solver, photometric=cfg.photometric, rigid_steps=5, nonrigid_steps=5,
                        warm_steps=5, renderer=cfg.renderer)   # the same kernels, allocator and caches
    fit3dmm.ClipFitter(model, warm_up, device).fit(*synthetic_clip(model, face, 16, clips, device, render))
    fitter = fit3dmm.ClipFitter(model, cfg, device)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = [fitter.fit(*clip) for clip in data]
    seconds = time.perf_counter() - start                   # fit() returns host arrays: synced
    errors = np.concatenate([r.landmark_error for r in results])
    out = {"clips": clips, "frames_per_clip": frames, "seconds": seconds,
           "frames_per_s": clips * frames / seconds, "device": device, "solver": cfg.solver,
           "photometric": cfg.photometric, "renderer": fitter.face.rasterizer.name if cfg.photometric else None,
           "vertices": model.n_vertices, "triangles": int(model.triangles.shape[0]),
           "landmark_error_px_mean": float(errors.mean()), "landmark_error_px_max": float(errors.max())}
    if render:
        with torch.no_grad():
            photo = [face.photometric_error(bfm.split(torch.as_tensor(r.coeffs, device=device)),
                                            torch.as_tensor(crops, device=device).float() / 255)
                     for r, (crops, _) in zip(results, data)]
        out["photometric_error_mean"] = float(torch.cat(photo).mean())
    return out


def row(name: str, r: dict) -> tuple[str, str]:
    photo = f", photometric {r['photometric_error_mean']:.4f}" if "photometric_error_mean" in r else ""
    return (f"3DMM {name} ({r['device']}, {r['clips']}x{r['frames_per_clip']} frames)",
            f"{r['frames_per_s']:.2f} frames/s, err {r['landmark_error_px_mean']:.3f} px "
            f"(max {r['landmark_error_px_max']:.3f}){photo}")


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
    parser.add_argument("--photometric-frames", type=int, default=4, help="the torch rasterizer's clip")
    parser.add_argument("--photometric-clips", type=int, default=1, help="nvdiffrast's clips (of --frames)")
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
        try:
            renderers.nvdiffrast(args.device)
            fast = FitConfig(solver="lbfgs", photometric=True, renderer="nvdiffrast")
            results["photometric_nvdiffrast"] = r = bench_fitting(model, args.device, fast, args.photometric_clips,
                                                                  args.frames, render=True)
            show(*row("photometric, nvdiffrast", r))
            results["photometric_clips_landmarks_only"] = d = bench_fitting(
                model, args.device, FitConfig(), args.photometric_clips, args.frames, render=True)
            show(*row("same clips, landmarks only", d))
        except renderers.RendererUnavailable as why:
            show("3DMM photometric, nvdiffrast", f"skipped: {why}")
        cfg = FitConfig(solver="lbfgs", photometric=True, renderer="torch")
        results["photometric"] = r = bench_fitting(model, args.device, cfg, 1, args.photometric_frames, render=True)
        show(*row("photometric, torch rasterizer", r))
    bench_report.write("preprocess", {**bench_report.metadata({k: str(v) for k, v in vars(args).items()}), **results},
                       args.out)


if __name__ == "__main__":
    bench_report.run_and_exit(main)

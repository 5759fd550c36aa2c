"""Preprocessing throughput: alignment and audio features (items/s per core), 3DMM fitting (frames/s).

    python bench/preprocess_bench.py [--out bench/results/preprocess.json] [--device cpu|cuda]

Runs on the bundled sample data and a synthetic BFM09-layout model, so it needs no downloads and
runs unchanged on a CUDA machine (fitting then runs on the GPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from launcher.atomic import write_json
from nerffacespeech.configs.preprocess import FitConfig
from nerffacespeech.preprocess import align, audio, bfm, fit3dmm, images, landmarks, template

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def bench_alignment(resolution: int = 256) -> dict:
    """Load + detect + 68 landmarks + FFHQ crop, one process, one thread."""
    paths = sorted((SAMPLE / "images" / "astronaut").glob("*.jpg"))[:40]
    marker = landmarks.DlibLandmarker()
    start = time.perf_counter()
    for path in paths:
        frame = images.load_frame(path, 64)
        face = landmarks.single_face(marker.detect([frame])[0], marker.min_score)
        align.align_faces([frame], face.landmarks[None], resolution)
    seconds = time.perf_counter() - start
    return {"items": len(paths), "seconds": seconds, "items_per_s_per_core": len(paths) / seconds,
            "landmarker": marker.name, "resolution": resolution}


def bench_audio() -> dict:
    """Load + check + log-mel + frame windows of each sample clip, repeated."""
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


def bench_fitting(device: str, frames: int, photometric: bool) -> dict:
    """Fit a synthetic clip of turning faces; frames/s and landmark error (px at 224)."""
    model = bfm.from_arrays(template.build("random", grid=40, seed=0), device)
    face = fit3dmm.FaceModel(model, 224)
    t = torch.arange(frames, device=device) / 25.0
    true = torch.zeros(frames, 257, device=device)
    true[:, 225] = 0.3 * torch.sin(t)
    true[:, 80:84] = torch.sin(3 * t)[:, None] * torch.tensor([1.0, -0.5, 0.5, 0.3], device=device)
    with torch.no_grad():
        image, _ = face.render(bfm.split(true))
        marks = face.landmarks(bfm.split(true))
    crops = (image.cpu().numpy() * 255).round().astype(np.uint8)
    cfg = FitConfig(photometric=photometric)
    fitter = fit3dmm.ClipFitter(model, cfg, device)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fitter.fit(crops, marks.cpu().numpy())
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds, "device": device,
            "photometric": photometric, "vertices": model.n_vertices,
            "landmark_error_px_mean": float(result.landmark_error.mean()),
            "landmark_error_px_max": float(result.landmark_error.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "preprocess.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"host": platform.node(), "torch": torch.__version__, "device": args.device,
               "alignment": bench_alignment(), "audio": bench_audio(),
               "fit3dmm": bench_fitting(args.device, args.frames, photometric=False),
               "fit3dmm_photometric": bench_fitting(args.device, min(args.frames, 16), photometric=True)}
    rows = [("alignment (load+detect+68 pts+crop)", f"{results['alignment']['items_per_s_per_core']:.1f} items/s/core"),
            ("audio (load+mel+windows, ~3 s clips)", f"{results['audio']['items_per_s_per_core']:.1f} items/s/core"),
            (f"3DMM fit, landmarks ({args.device})", f"{results['fit3dmm']['frames_per_s']:.1f} frames/s, "
             f"err {results['fit3dmm']['landmark_error_px_mean']:.2f} px"),
            (f"3DMM fit, + photometric ({args.device})", f"{results['fit3dmm_photometric']['frames_per_s']:.2f} frames/s, "
             f"err {results['fit3dmm_photometric']['landmark_error_px_mean']:.2f} px")]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

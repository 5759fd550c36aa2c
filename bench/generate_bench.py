"""Generation throughput: frames/s of the talking head (render only, and render + H.264 encode +
audio mux into an MP4), and peak memory, per preset x batch size x precision, random weights.

    python bench/generate_bench.py --device cuda                  # paper256 + paper1024, batch 8
    python bench/generate_bench.py --presets tiny --frames 16 --device cpu     # a CPU check

Each configuration builds the talking head from random initialisation (the generator of the
preset, audio2nerf at its w_dim, the synthetic morphable model), runs `--warmup` batches, then
renders `--frames` frames of the sample speech at a gentle camera path and times it; the MP4
pass repeats it through the same writer as `python -m nerffacespeech.generate`. bf16 runs the
networks under autocast (compositing stays fp32). Prints a table and writes JSON (default
bench/results/generate.json) with the commit, machine, versions and configuration.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch

import report as bench_report
from nerffacespeech.preprocess.video import ffmpeg

ROOT = bench_report.REPO
SPEECH = ROOT / "data" / "sample" / "audio" / "astronaut" / "00001.wav"


def build_head(preset: str, device: torch.device):
    """A talking head with random weights for `preset` (what the benchmark times)."""
    from nerffacespeech.configs.audio2nerf import ModelConfig
    from nerffacespeech.configs.stylenerf import PRESETS
    from nerffacespeech.models.audio2nerf import generator_source
    from nerffacespeech.models.audio2nerf.face import load_face_basis
    from nerffacespeech.models.audio2nerf.network import Audio2NeRF
    from nerffacespeech.models.audio2nerf.talking_head import TalkingHead

    torch.manual_seed(0)
    generator = generator_source.build({"kind": "random", "preset": preset, "model": {}, "seed": 0}, device)
    net = Audio2NeRF(ModelConfig(nerf_dim=PRESETS[preset].model.w_dim))
    return TalkingHead(net, generator, load_face_basis("synthetic"), preset, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(preset: str, batch: int, precision: str, frames: int, warmup: int, device: torch.device) -> dict:
    from nerffacespeech.generate import cameras, frames as frame_loop, identity, speech, video
    from nerffacespeech.preprocess.audio import log_mel

    head = build_head(preset, device)
    audio = speech.load_audio(SPEECH, 600, -60)
    n = frames
    windows = head.mel_windows(log_mel(audio), n)
    ref = head.neutral_expression()
    ws = identity.seed_styles(head.generator, 0, 0.7)
    angles = torch.from_numpy(cameras.gentle(n, 0, 0, 0.12, 0.04, 5.0)).to(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with autocast:
        exps = frame_loop.smooth(head.expressions(windows, ref), 1.0)
        for _ in frame_loop.render_frames(head.render, ws, exps[:batch * warmup], ref, angles, batch):
            pass
        _sync(device)
        start = time.perf_counter()
        for _ in frame_loop.render_frames(head.render, ws, exps, ref, angles, batch):
            pass
        _sync(device)
        render_s = time.perf_counter() - start
        mp4_s = None
        if have_ffmpeg():
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                with video.Mp4Writer(Path(tmp) / "bench.mp4", head.resolution, audio, n) as writer:
                    for batch_frames in frame_loop.render_frames(head.render, ws, exps, ref, angles, batch):
                        writer.write(batch_frames)
                mp4_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"preset": preset, "resolution": head.resolution, "batch": batch, "precision": precision,
            "frames": n, "render_fps": n / render_s, "mp4_fps": n / mp4_s if mp4_s else None, "peak_gib": peak}


def have_ffmpeg() -> bool:
    """Whether imageio-ffmpeg's encoder is installed (the GPU machine lacks it: a 70 MB wheel)."""
    try:
        ffmpeg()
        return True
    except ImportError:
        return False


def table(results: list[dict]) -> str:
    lines = [f"{'preset':<10} {'px':>5} {'batch':>5} {'prec':>5} {'render f/s':>11} {'mp4 f/s':>8} {'peak GiB':>9}"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['preset']:<10} {'':>5} {r['batch']:>5} {r['precision']:>5}  error: {r['error'][:60]}")
            continue
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        mp4 = "-" if r["mp4_fps"] is None else f"{r['mp4_fps']:.1f}"
        lines.append(f"{r['preset']:<10} {r['resolution']:>5} {r['batch']:>5} {r['precision']:>5} "
                     f"{r['render_fps']:>11.1f} {mp4:>8} {peak:>9}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="paper256,paper1024")
    parser.add_argument("--batches", default="8", help="frames per render call, comma-separated")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--frames", type=int, default=82, help="frames timed (82: the 3.3 s sample speech)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "generate.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    report = {**bench_report.metadata({"presets": args.presets, "batches": args.batches, "precisions":
                                       args.precisions, "frames": args.frames, "warmup": args.warmup,
                                       "device": str(device), "mp4": have_ffmpeg()}, "imageio-ffmpeg"),
              "results": []}
    for preset in args.presets.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for precision in args.precisions.split(","):
                try:
                    result = run_config(preset, batch, precision, args.frames, args.warmup, device)
                except Exception as exc:          # one failing configuration must not lose the others
                    result = {"preset": preset, "batch": batch, "precision": precision,
                              "error": f"{type(exc).__name__}: {exc}"}
                report["results"].append(result)
                print(json.dumps(result), flush=True)
    report["table"] = table(report["results"])
    print("\n" + report["table"], flush=True)
    bench_report.write("generate", report, Path(args.out))

if __name__ == "__main__":
    bench_report.run_and_exit(main)

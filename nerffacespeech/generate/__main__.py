"""`python -m nerffacespeech.generate`: the CLI of generation (flags as the original's script).

Example: python -m nerffacespeech.generate --run-dir runs/demo-… --test_data speech.wav --seeds 0-2 --outdir out
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FLAGS = {   # CLI flag → config key
    "test_data": "audio", "run_dir": "run_dir", "network": "generator", "audio2nerf": "audio2nerf",
    "outdir": "output_dir", "trunc": "truncation", "face_image": "face_image",
    "projection_steps": "projection_steps", "camera": "camera", "poses": "poses", "pose_clip": "pose_clip",
    "yaw": "yaw", "pitch": "pitch", "smoothing": "smoothing_frames", "batch_size": "batch_size",
    "max_audio_seconds": "max_audio_seconds", "crf": "crf", "device": "device",
}


def seed_list(text: str) -> list[int]:
    """'0,3,5-7' → [0, 3, 5, 6, 7]."""
    out = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out += list(range(int(low), int(high) + 1)) if high else [int(low)]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nerffacespeech.generate", description=__doc__.splitlines()[0])
    p.add_argument("--test_data", "--audio", dest="test_data", required=True, help="speech file (any format)")
    p.add_argument("--outdir", required=True, help="folder for <identity>.mp4 and <identity>-sheet.png")
    p.add_argument("--run-dir", dest="run_dir", help="a run with stylenerf and audio2nerf stages")
    p.add_argument("--network", help="StyleNeRF G weights (safetensors); default: the run's latest G_ema")
    p.add_argument("--audio2nerf", help="audio2nerf checkpoint; default: the run's latest")
    p.add_argument("--seeds", type=seed_list, default=None, help="identities, e.g. 0,3,5-7")
    p.add_argument("--trunc", type=float, help="truncation psi (default 0.7)")
    p.add_argument("--face-image", dest="face_image", help="a photo with one face, projected into W")
    p.add_argument("--projection-steps", dest="projection_steps", type=int)
    p.add_argument("--camera", choices=("fixed", "gentle", "poses"))
    p.add_argument("--poses", help="poses.json of a preprocessed driving clip (with --camera poses)")
    p.add_argument("--pose-clip", dest="pose_clip", help="'<person>/<clip>' in poses.json")
    p.add_argument("--yaw", type=float)
    p.add_argument("--pitch", type=float)
    p.add_argument("--smoothing", type=float, help="expression smoothing sigma in frames (0: off)")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--max-audio-seconds", dest="max_audio_seconds", type=float)
    p.add_argument("--crf", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    config = {FLAGS[k]: v for k, v in args.items() if k in FLAGS and v is not None}
    if args["seeds"] is not None:
        config["seeds"] = args["seeds"]
    elif not args["face_image"]:
        config["seeds"] = [0]

    from nerffacespeech.configs.generate import GenerateConfig
    from nerffacespeech.preprocess.errors import BadInput

    cfg, problems = GenerateConfig.parse(config)
    if cfg is None:
        flag = {v: k for k, v in FLAGS.items()}
        for field, message in problems:
            print(f"error: --{flag.get(field, field).replace('_', '-')}: {message}", file=sys.stderr)
        return 2
    from .pipeline import generate

    try:
        clips = generate(cfg, Path(cfg.output_dir))
    except BadInput as exc:
        print(f"error: {exc.kind}: {exc.detail}", file=sys.stderr)
        return 1
    for clip in clips:
        print(f"{clip.video} ({clip.frames} frames, {clip.frames / clip.render_seconds:.1f} frames/s) "
              f"and {clip.sheet.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

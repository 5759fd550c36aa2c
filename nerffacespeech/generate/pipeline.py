"""Audio + trained networks → one talking-head MP4 (and contact sheet) per identity.

Every input is checked before anything is written (audio, camera path, face photo, then the
checkpoints), so a bad input leaves no file behind; a failure while encoding removes the
temporary files (see `video.Mp4Writer`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from launcher.layout import RunLayout
from nerffacespeech.configs.generate import GenerateConfig
from nerffacespeech.preprocess.audio import log_mel
from nerffacespeech.preprocess.errors import BadInput

from . import cameras, frames, identity, speech, video


@dataclass(frozen=True)
class Clip:
    identity: str
    video: Path
    sheet: Path
    frames: int
    render_seconds: float


def checkpoint_paths(cfg: GenerateConfig, run_dir: Path | None) -> tuple[Path, Path | None]:
    """The audio2nerf checkpoint and the generator override (None: the one audio2nerf was trained with)."""
    root = Path(cfg.run_dir) if cfg.run_dir else run_dir
    if cfg.audio2nerf:
        a2n = Path(cfg.audio2nerf)
    elif root is not None:
        a2n = RunLayout(root).stage(cfg.audio2nerf_stage).checkpoints
    else:
        raise BadInput("checkpoint_missing", "give audio2nerf (a checkpoint) or run_dir (a run with an "
                                             "audio2nerf stage)")
    gen = Path(cfg.generator) if cfg.generator else None
    for path in (a2n, gen):
        if path is not None and not path.exists():
            raise BadInput("checkpoint_missing", f"{path} does not exist")
    return a2n, gen


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("device", "device cuda requested but no CUDA GPU is visible")
    return torch.device(name)


def camera_path(cfg: GenerateConfig, n_frames: int) -> np.ndarray:
    if cfg.camera == "poses":
        return cameras.from_poses_json(Path(cfg.poses), n_frames, cfg.pose_clip)
    if cfg.camera == "gentle":
        return cameras.gentle(n_frames, cfg.yaw, cfg.pitch, cfg.gentle_yaw, cfg.gentle_pitch, cfg.gentle_period)
    return cameras.fixed(n_frames, cfg.yaw, cfg.pitch)


def load_head(a2n: Path, gen: Path | None, device: torch.device):
    """The trained talking head; a checkpoint of another preset is a BadInput, not a traceback."""
    from nerffacespeech.models.audio2nerf.talking_head import load_talking_head

    try:
        return load_talking_head(a2n, gen, device=device)
    except FileNotFoundError as exc:
        raise BadInput("checkpoint_missing", str(exc)) from None
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        if "preset" in str(exc) or "size mismatch" in str(exc) or "key(s)" in str(exc):
            raise BadInput("checkpoint_preset", f"{gen or a2n} does not fit the audio2nerf checkpoint "
                                                f"{a2n}: {first}") from None
        raise


def generate(cfg: GenerateConfig, output_dir: Path, run_dir: Path | None = None, head=None) -> list[Clip]:
    """Write <identity>.mp4 and <identity>-sheet.png into `output_dir` for every identity.

    `head` is an already loaded talking head (benchmarks, tests); by default it is loaded from
    the config's checkpoints.
    """
    device = resolve_device(cfg.device)
    audio = speech.load_audio(Path(cfg.audio), cfg.max_audio_seconds, cfg.silence_dbfs)
    n_frames = speech.frame_count(audio)
    angles = torch.from_numpy(camera_path(cfg, n_frames)).to(device)
    face = identity.find_face(Path(cfg.face_image)) if cfg.face_image else None
    if head is None:
        head = load_head(*checkpoint_paths(cfg, run_dir), device)

    styles = {f"seed{s:04d}": identity.seed_styles(head.generator, s, cfg.truncation) for s in cfg.seeds}
    if face is not None:
        with tqdm(total=cfg.projection_steps, desc="projecting face", mininterval=2) as bar:
            target = identity.aligned_face(*face, head.resolution)
            styles["face"], losses = identity.project(head.generator, target, cfg.projection_steps,
                                                      cfg.projection_lr, cfg.seed, bar)
        print(json.dumps({"projection_loss": [round(losses[0], 5), round(losses[-1], 5)]}), flush=True)

    ref_exp = head.neutral_expression()
    windows = head.mel_windows(log_mel(audio), n_frames)
    expressions = frames.smooth(head.expressions(windows, ref_exp), cfg.smoothing_frames)
    picks = video.sheet_indices(n_frames, cfg.sheet_frames)
    clips = []
    with tqdm(total=n_frames * len(styles), desc="rendering", unit="frame", mininterval=2) as bar:
        for name, ws in styles.items():
            out, sheet, started = output_dir / f"{name}.mp4", [], time.perf_counter()
            with video.Mp4Writer(out, head.resolution, audio, n_frames, crf=cfg.crf) as writer:
                for batch in frames.render_frames(head.render, ws, expressions, ref_exp, angles, cfg.batch_size):
                    first = writer.frames_written
                    sheet += [batch[i - first] for i in picks if first <= i < first + len(batch)]
                    writer.write(batch)
                    bar.update(len(batch))
            seconds = time.perf_counter() - started
            sheet_path = output_dir / f"{name}-sheet.png"
            video.write_contact_sheet(sheet_path, sheet)
            clips.append(Clip(name, out, sheet_path, n_frames, seconds))
    return clips

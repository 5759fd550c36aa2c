"""Inference API of audio2nerf (used by generation): audio -> expressions -> rendered frames.

    head = load_talking_head(run_dir / "stages/audio2nerf/checkpoints/latest")
    exps = head.expressions(head.mel_windows(mel, n_frames), head.neutral_expression())
    frames = head.render(ws, exps, head.neutral_expression(), angles)      # (B, 3, H, W) in [-1, 1]

`ref_exp` is the 3DMM expression of the source image. For a generated seed identity there is no
fitted source: use `neutral_expression()` (the mean of the training clips' reference expressions,
recorded in the checkpoint), i.e. the seed's rendering is taken as a typical source face and the
audio moves its mouth. Zeros (the morphable model's mean, which the fits never produce) put the
expression head and LipaintNet outside what they were trained on; the learned mouth motion then
swung with the seed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from nerffacespeech.configs.audio2nerf import ModelConfig

from . import generator_source
from .deform import RayDeformation
from .face import FaceBasis, load_face_basis
from .lipaint import EXP_DIM
from .network import Audio2NeRF

EXPORT = "audio2nerf"        # <step>/audio2nerf.safetensors: the trained networks (plain module state)
PROGRESS = "progress"        # <step>/progress.json: step, model config, generator source, face model


class TalkingHead:
    """The trained audio2nerf networks with the frozen generator they were trained through."""

    def __init__(self, net: Audio2NeRF, generator, face: FaceBasis, preset: str, device: torch.device,
                 neutral: list[float] | None = None, neutral_blink: float = 0.0):
        self.net = net.eval().requires_grad_(False).to(device)
        self.generator = generator
        self.face = face.to(device)
        self.deformation = RayDeformation(face, net.cfg.deform_sigma, net.cfg.deform_vertices).to(device)
        self.preset = preset
        self.resolution = generator.cfg.resolution
        self.device = device
        self.neutral = torch.zeros(EXP_DIM) if neutral is None else torch.tensor(neutral, dtype=torch.float32)
        self.neutral_blink = neutral_blink

    def neutral_expression(self) -> torch.Tensor:
        """(64,) the reference for seed identities: the training clips' mean reference expression
        (zeros, the morphable model's mean, for checkpoints that do not record it)."""
        return self.neutral.to(self.device)

    @staticmethod
    def mel_windows(mel: np.ndarray, n_frames: int) -> torch.Tensor:
        """(T, 80, 16) windows of a clip's (M, 80) mel (preprocess.audio.log_mel) for T video frames at 25 fps."""
        from nerffacespeech.preprocess.audio import frame_windows

        return torch.from_numpy(np.ascontiguousarray(frame_windows(mel, n_frames).transpose(0, 2, 1)))

    @torch.no_grad()
    def expressions(self, mel_windows: torch.Tensor, ref_exp: torch.Tensor,
                    blink: torch.Tensor | None = None, chunk: int = 256) -> torch.Tensor:
        """(T, 64) expressions for mel windows (T, 80, 16) or (T, 1, 80, 16); blink (T,) ratios or
        None (the training frames' mean)."""
        ref = ref_exp.to(self.device).float()
        out = []
        for i in range(0, mel_windows.shape[0], chunk):
            b = None if blink is None else blink[i:i + chunk].to(self.device)
            if b is None:
                b = torch.full((len(mel_windows[i:i + chunk]),), self.neutral_blink, device=self.device)
            out.append(self.net.expressions(mel_windows[i:i + chunk].to(self.device).float(), ref, b))
        return torch.cat(out)

    @torch.no_grad()
    def render(self, ws: torch.Tensor, exps: torch.Tensor, ref_exp: torch.Tensor,
               angles: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) frames in [-1, 1]: styles ws (B, num_ws, w_dim) through LipaintNet and the ray
        deformation from `ref_exp` (64,) to `exps` (B, 64), seen from yaw/pitch `angles` (B, 2)."""
        ws, exps = ws.to(self.device).float(), exps.to(self.device).float()
        ref = ref_exp.to(self.device).float()
        styled = self.net.lipaint(ws, exps, ref).float()
        warp = self.deformation.warp(exps, ref)
        img = self.generator(ws=styled, angles=angles.to(self.device), randomize=False, point_warp=warp).img
        return img.clamp(-1, 1)


def read_record(checkpoint: Path) -> tuple[Path, dict]:
    """The step folder and its progress record (model config, generator source, face model)."""
    folder = generator_source.step_dir(Path(checkpoint))
    return folder, json.loads((folder / f"{PROGRESS}.json").read_text())


def load_talking_head(audio2nerf_ckpt: Path, generator_ckpt: Path | None = None,
                      device: str | torch.device = "cpu") -> TalkingHead:
    """The talking head of an audio2nerf checkpoint (a step folder, `latest`, or the checkpoints
    folder). The generator defaults to the one it was trained with; `generator_ckpt` overrides it
    (a stylenerf.train checkpoint or a safetensors file of the same architecture)."""
    from safetensors.torch import load_file

    device = torch.device(device)
    folder, record = read_record(Path(audio2nerf_ckpt))
    net = Audio2NeRF(ModelConfig(**record["model"]))
    net.load_state_dict(load_file(str(folder / f"{EXPORT}.safetensors")), strict=True)
    source = record["generator"]
    if generator_ckpt is not None:
        source = generator_source.describe(str(generator_ckpt), source["preset"])
        if source["kind"] == "checkpoint" and source["preset"] != record["generator"]["preset"]:
            raise ValueError(f"{generator_ckpt}: preset {source['preset']}, trained with "
                             f"{record['generator']['preset']}")
        source = {**source, "model": source["model"] or record["generator"].get("model", {})}
    generator = generator_source.build(source, device)
    face = load_face_basis(record["face_model"], Path(record["pretrained_root"]))
    return TalkingHead(net, generator, face, source["preset"], device, record.get("neutral"),
                       record.get("neutral_blink", 0.0))


__all__ = ["TalkingHead", "load_talking_head", "read_record"]

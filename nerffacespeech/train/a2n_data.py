"""The processed dataset (stage 1's clips) as audio2nerf reads it: per clip the mel windows, fitted
expressions, camera angles, aligned frames at the generator's resolution, mouth boxes and blink
ratios, all in memory; the last `holdout` fraction of every clip is held out for evaluation.

Each training sequence is a pure function of (seed, step, its index in the step's global batch),
so a resumed run draws exactly the sequences an uninterrupted one would, and a run resumed on
another world size (the total batch kept) draws the same sequences per step, split otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nerffacespeech.data.processed import ProcessedClip, ProcessedData
from nerffacespeech.preprocess.audio import frame_window

from .a2n_augment import MelAugment

MOUTH_PAD = 0.25               # mouth box margin, fraction of its size


@dataclass
class TrainingClip:
    """One processed clip as training tensors, at the generator's resolution."""

    key: str
    mel: torch.Tensor          # (K, 80, 16) windows
    exp: torch.Tensor          # (K, 64) fitted expressions
    angles: torch.Tensor       # (K, 2) generator yaw, pitch
    frames: torch.Tensor       # (K, 3, r, r) in [-1, 1]
    mouth: torch.Tensor        # (K, 1, r, r) 1 inside the mouth box
    blink: torch.Tensor        # (K,) eye aspect ratio
    n_train: int

    @property
    def ref(self) -> torch.Tensor:
        """The reference expression: the clip's first frame (the 'source image')."""
        return self.exp[0]


class TalkingData:
    def __init__(self, root: Path, resolution: int, holdout: float):
        data = ProcessedData(Path(root))
        keys = data.done_keys()
        if not keys:
            raise ValueError(f"{root}: no processed clips")
        self.face_model = data.face_model(keys)
        self.clips = [_training_clip(data.read_clip(k), resolution, holdout) for k in keys]
        # What generation conditions a seed identity on (it has no source frame): the mean reference
        # and blink ratio seen in training, so expression offsets and LipaintNet stay in distribution.
        self.neutral = torch.stack([c.ref for c in self.clips]).mean(0)
        self.neutral_blink = float(torch.cat([c.blink[:c.n_train] for c in self.clips]).mean())

    def train_batch(self, generators: list[torch.Generator], seq_len: int,
                    augment: MelAugment | None = None) -> dict[str, torch.Tensor]:
        """One sequence of seq_len consecutive training frames per generator (its clip drawn
        uniformly, then its start), its mel windows augmented when `augment` is given and
        active; every draw of a sequence comes from its own generator."""
        items = []
        for generator in generators:
            c = int(torch.randint(len(self.clips), (1,), generator=generator))
            start = int(torch.randint(max(self.clips[c].n_train - seq_len + 1, 1), (1,), generator=generator))
            items.append((c, start))
        batch = self._gather(items, seq_len)
        if augment is not None and augment.active:
            batch["mel"] = torch.cat([augment(batch["mel"][i:i + 1], generator)
                                      for i, generator in enumerate(generators)])
        return batch

    def _gather(self, items: list[tuple[int, int]], seq_len: int) -> dict[str, torch.Tensor]:
        out: dict[str, list] = {k: [] for k in ("mel", "exp", "blink", "ref", "clip", "angles", "frame", "mouth")}
        mid = seq_len // 2
        for c, start in items:
            clip, s = self.clips[c], slice(start, start + seq_len)
            out["mel"].append(clip.mel[s])
            out["exp"].append(clip.exp[s])
            out["blink"].append(clip.blink[s])
            out["ref"].append(clip.ref)
            out["clip"].append(torch.tensor(c))
            out["angles"].append(clip.angles[start + mid])
            out["frame"].append(clip.frames[start + mid])
            out["mouth"].append(clip.mouth[start + mid])
        return {k: torch.stack(v) for k, v in out.items()}


def micro_batch_generators(seed: int, step: int, micro: int, rank: int, world_size: int,
                           per_rank: int) -> list[torch.Generator]:
    """The generators of one rank's micro-batch: sequences (micro x world_size + rank) x per_rank
    onwards of step's global batch, which the ranks' micro-batches cover exactly once."""
    first = (micro * world_size + rank) * per_rank
    base = (seed * 1_000_003 + step) * 1_048_576 + first
    return [torch.Generator().manual_seed(base + i) for i in range(per_rank)]


def _training_clip(clip: ProcessedClip, resolution: int, holdout: float) -> TrainingClip:
    z = clip.arrays
    k = len(clip.frame_index)
    n_train = max(2, int(math.floor(k * (1 - holdout))))
    mel = np.stack([frame_window(z["mel"], int(s)).T for s in z["mel_starts"]]).astype(np.float32)
    poses = z["poses"].astype(np.float32)
    angles = np.stack([poses[:, 0] - math.pi / 2, math.pi / 2 - poses[:, 1]], 1)
    frames = torch.from_numpy(clip.images()).permute(0, 3, 1, 2).float() / 127.5 - 1
    crop = frames.shape[-1]
    frames = F.interpolate(frames, size=(resolution, resolution), mode="area") if crop != resolution else frames
    landmarks = torch.from_numpy(z["landmarks_aligned"].astype(np.float32)) * (resolution / crop)
    return TrainingClip(key=clip.key, mel=torch.from_numpy(mel),
                        exp=torch.from_numpy(clip.expressions.astype(np.float32)),
                        angles=torch.from_numpy(angles), frames=frames, mouth=_mouth_boxes(landmarks, resolution),
                        blink=_eye_ratio(landmarks), n_train=n_train)


def _mouth_boxes(landmarks: torch.Tensor, resolution: int) -> torch.Tensor:
    """(K, 1, r, r) masks of the lips' bounding boxes, padded by MOUTH_PAD."""
    lips = landmarks[:, 48:68]
    lo, hi = lips.amin(1), lips.amax(1)
    pad = (hi - lo) * MOUTH_PAD
    lo, hi = lo - pad, hi + pad
    grid = torch.arange(resolution, dtype=torch.float32) + 0.5
    inside_x = (grid[None] >= lo[:, :1]) & (grid[None] <= hi[:, :1])          # (K, r) columns
    inside_y = (grid[None] >= lo[:, 1:]) & (grid[None] <= hi[:, 1:])          # (K, r) rows
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]


def _eye_ratio(landmarks: torch.Tensor) -> torch.Tensor:
    """(K,) eye aspect ratio averaged over both eyes (SadTalker's blink input is a ratio like it)."""
    ratios = []
    for s in (36, 42):
        p = landmarks[:, s:s + 6]
        vertical = (p[:, 1] - p[:, 5]).norm(dim=-1) + (p[:, 2] - p[:, 4]).norm(dim=-1)
        ratios.append(vertical / (2 * (p[:, 0] - p[:, 3]).norm(dim=-1)).clamp_min(1e-6))
    return torch.stack(ratios).mean(0)

"""Held-out evaluation of audio2nerf: expression L1, lip-landmark error (px at 224), lip-sync proxy
(Pearson correlation of the predicted mouth opening with the audio energy envelope, per clip, and
the same for the fitted expressions as the ceiling), photometric L1 of rendered held-out frames,
and an image grid (per clip, rows of real / rendered frames)."""
from __future__ import annotations

import torch

from nerffacespeech.models.audio2nerf.face import lip_distance
from nerffacespeech.models.audio2nerf.network import Audio2NeRF

from .a2n_data import TalkingData
from .a2n_objective import Renderer

GRID_FRAMES = 4


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-8))


@torch.no_grad()
def evaluate(net: Audio2NeRF, latents: torch.Tensor, data: TalkingData,
             renderer: Renderer) -> tuple[dict[str, float], torch.Tensor]:
    device = latents.device
    face, generator = renderer.face, renderer.generator
    exp_l1, lip, frames, photo, sync, sync_fit = [], [], [], [], [], []
    for c, clip in enumerate(data.clips):
        held = slice(clip.n_train, None)
        fit = clip.exp[held].to(device)
        ref = clip.ref.to(device)
        pred = net.expressions(clip.mel[held].to(device), ref, clip.blink[held].to(device))
        exp_l1.append((pred - fit).abs().mean(1))
        lip.append(lip_distance(face, pred, fit))
        energy = clip.mel[held].mean(dim=(1, 2)).to(device)
        sync.append(correlation(face.mouth_opening(pred), energy))
        sync_fit.append(correlation(face.mouth_opening(fit), energy))
        pick = torch.linspace(0, len(fit) - 1, GRID_FRAMES).round().long()
        ws = latents[c][None, None].expand(len(pick), generator.num_ws, -1).float()
        styled = net.lipaint(ws, pred[pick], ref).float()
        img = generator(ws=styled, angles=clip.angles[held][pick].to(device), randomize=False,
                        point_warp=renderer.deformation.warp(pred[pick], ref)).img.clamp(-1, 1)
        real = clip.frames[held][pick].to(device)
        photo.append((img - real).abs().mean())
        frames.append(torch.cat([torch.cat(list(real), 2), torch.cat(list(img), 2)], 1))
    grid = ((torch.cat(frames, 1).float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    results = {"exp_l1": float(torch.cat(exp_l1).mean()), "lip_px": float(torch.cat(lip).mean()),
               "sync_corr": sum(sync) / len(sync), "sync_corr_fitted": sum(sync_fit) / len(sync_fit),
               "photo_l1": float(torch.stack(photo).mean())}
    return results, grid

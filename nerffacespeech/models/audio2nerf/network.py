"""The audio2nerf networks in one module: audio encoder -> expression head (audio path) and
LipaintNet (W path). This is what training optimises and what a checkpoint exports."""
from __future__ import annotations

import torch
from torch import nn

from nerffacespeech.configs.audio2nerf import ModelConfig

from .audio_encoder import AudioEncoder
from .expression import ExpressionHead
from .lipaint import LipaintNet


class Audio2NeRF(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.audio_encoder = AudioEncoder(cfg.audio_dim, cfg.encoder_width)
        self.expression = ExpressionHead(cfg.audio_dim)
        self.lipaint = LipaintNet(cfg.nerf_dim, cfg.lipaint_layers)

    def expressions(self, mel: torch.Tensor, ref_exp: torch.Tensor, blink: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 64) expressions for mel windows (N, 80, 16) or (N, 1, 80, 16), references (64,) or (N, 64)."""
        dtype = self.expression.mlp[0].weight.dtype
        mel = (mel[:, None] if mel.dim() == 3 else mel).to(dtype)
        n = mel.shape[0]
        ref = ref_exp.expand(n, -1) if ref_exp.dim() == 1 else ref_exp
        blink = torch.zeros(n, device=mel.device) if blink is None else blink
        return self.expression(self.audio_encoder(mel), ref, blink).float()


def parameter_counts(model: Audio2NeRF) -> dict[str, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())
    return {"audio_encoder": count(model.audio_encoder), "expression_head": count(model.expression),
            "lipaint": count(model.lipaint), "total": count(model)}

"""Fréchet Inception distance from pool3 features, with the Inception weights read from a local file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from .inception import FIDInception


def load_inception(weights: str | Path | None, device: torch.device) -> FIDInception:
    """The FID Inception with `weights` (a state dict, loaded weights-only, strict); random when None."""
    network = FIDInception()
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights {path} not found; put pt_inception-2015-12-05 into "
                                    "pretrained_networks/ (nothing is downloaded)")
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return network.eval().requires_grad_(False).to(device)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of two (N, D) feature sets."""
    a, b = real.double().cpu().numpy(), fake.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = np.real(root)
    return float(np.square(mu_a - mu_b).sum() + np.trace(cov_a + cov_b - 2 * root))

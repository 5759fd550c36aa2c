"""Fréchet Inception distance from pool3 features, with the Inception weights read from a local file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
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
    """||mu_r - mu_f||^2 + Tr(S_r) + Tr(S_f) - 2 Tr((S_r S_f)^(1/2)) of two (N, D) feature sets.

    The last trace is the sum of the square roots of the eigenvalues of S_r S_f. With centred
    features A (n x D) and B (m x D) those are the squared singular values of
    A B^T / sqrt((n-1)(m-1)), so when there are fewer images than dimensions the trace is that
    matrix's nuclear norm (exact, and no 2048 x 2048 matrix square root); otherwise it comes
    from a symmetric eigendecomposition of S_r^(1/2) S_f S_r^(1/2).
    """
    a, b = real.double().cpu(), fake.double().cpu()
    n, m, dims = a.shape[0], b.shape[0], a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)
    a, b = a - mu_a, b - mu_b
    trace_a, trace_b = a.square().sum() / (n - 1), b.square().sum() / (m - 1)
    if min(n, m) <= dims:
        cross = torch.linalg.svdvals(a @ b.T).sum() / np.sqrt((n - 1) * (m - 1))
    else:
        cov_a, cov_b = a.T @ a / (n - 1), b.T @ b / (m - 1)
        values, vectors = torch.linalg.eigh(cov_a)
        root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
        cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + trace_a + trace_b - 2 * cross)

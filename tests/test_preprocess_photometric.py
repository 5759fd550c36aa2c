"""The photometric refinement of the landmark fit (`fit3dmm.photometric` with solver `lm`, issue
22) fits what landmarks cannot see: skin tone and light.

On the CPU with the pure-PyTorch rasterizer, at the smallest fitting size (64 px) and a coarse
synthetic face so that it runs in seconds; the GPU benchmark (bench/preprocess_bench.py
--parts photometric) measures the same refinement at 224 px on a BFM09-sized mesh.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nerffacespeech.configs.preprocess import FitConfig, PreprocessConfig
from nerffacespeech.preprocess import bfm, fit3dmm, template

SIZE = 64


@pytest.fixture(scope="module")
def clip():
    """Four frames of a talking, turning face with its own texture and light, rendered at 64 px."""
    torch.set_num_threads(2)
    model = bfm.from_arrays(template.build("random", grid=16, seed=0), "cpu")
    g = torch.Generator().manual_seed(5)
    true = torch.zeros(4, 257)
    true[:, :80] = torch.randn(80, generator=g) * 0.5
    true[:, 80:88] = torch.randn(4, 8, generator=g)
    true[:, 144:224] = torch.randn(80, generator=g) * 0.5
    true[:, 225] = torch.linspace(-0.3, 0.3, 4)
    true[:, 227:254] = torch.randn(27, generator=g) * 0.1
    true[:, 256] = 0.1
    face = fit3dmm.FaceModel(model, SIZE)
    with torch.no_grad():
        image, _ = face.render(bfm.split(true))
        marks = face.landmarks(bfm.split(true))
    return model, face, (image.numpy() * 255).round().astype(np.uint8), marks.numpy()


def fitted(clip, cfg: FitConfig) -> tuple[float, float]:
    """Mean landmark error (px at 64) and photometric error of `cfg`'s fit of the clip."""
    model, face, crops, marks = clip
    result = fit3dmm.ClipFitter(model, cfg).fit(crops, marks)
    with torch.no_grad():
        photo = face.photometric_error(bfm.split(torch.as_tensor(result.coeffs)),
                                       torch.as_tensor(crops).float() / 255)
    return float(result.landmark_error.mean()), float(photo.mean())


def test_the_refinement_fits_skin_and_light_and_keeps_the_landmarks(clip):
    landmark_only = fitted(clip, FitConfig(fit_size=SIZE))
    refined = fitted(clip, FitConfig(fit_size=SIZE, photometric=True, renderer="torch", appearance_steps=60,
                                     photometric_steps=10))
    print(f"\nlandmark px, photometric: landmarks only {landmark_only}, refined {refined}")
    assert refined[1] < landmark_only[1] / 3          # measured: 0.151 -> 0.02-0.03
    assert refined[0] < landmark_only[0] + 0.1        # a tenth of a pixel at 64 px


def test_the_refinements_settings_are_checked_by_name():
    cfg, problems = PreprocessConfig.parse({"data_dir": "data/sample", "fit3dmm": {
        "photometric": True, "photometric_lr": 0, "photometric_steps": -1, "photometric_batch": 0}})
    assert cfg is None
    assert problems == [("fit3dmm.photometric_steps", "must be at least 0"),
                        ("fit3dmm.photometric_batch", "must be at least 1"),
                        ("fit3dmm.photometric_lr", "must be above 0, got 0")]


def test_the_photometric_loss_is_accepted_with_either_solver():
    for solver in ("lm", "lbfgs"):
        cfg, problems = PreprocessConfig.parse({"data_dir": "data/sample",
                                                "fit3dmm": {"photometric": True, "solver": solver}})
        assert problems == [] and cfg.fit3dmm.solver == solver


def test_the_refinements_settings_enter_the_items_fingerprint_only_where_the_fit_uses_them():
    """Items fitted from landmarks before these settings existed stay done; a changed refinement
    redoes the items it refined."""
    def fingerprint(**fit):
        return PreprocessConfig.parse({"data_dir": "data/sample", "fit3dmm": fit})[0].fingerprint_fields()

    assert "photometric_steps" not in fingerprint()["fit3dmm"]
    assert fingerprint(photometric_steps=7) == fingerprint()
    assert fingerprint(photometric=True, solver="lbfgs", photometric_lr=0.1) == \
        fingerprint(photometric=True, solver="lbfgs")
    assert fingerprint(photometric=True, photometric_steps=7) != fingerprint(photometric=True)

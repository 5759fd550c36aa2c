"""The photometric fit's rasterizer choice (`fit3dmm.renderer`) on machines without nvdiffrast,
as CI is: the config refuses unknown names, `auto` falls back to the pure-PyTorch rasterizer
(with a warning where a GPU loses its fast path), an explicit `nvdiffrast` says why it cannot
run. The nvdiffrast backend itself is tested on the GPU (tests/test_render_nvdiffrast_gpu.py)."""
from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from nerffacespeech.configs.preprocess import FitConfig, PreprocessConfig
from nerffacespeech.preprocess import bfm, fit3dmm, render, renderers, template

without_nvdiffrast = pytest.mark.skipif(importlib.util.find_spec("nvdiffrast") is not None,
                                        reason="nvdiffrast is installed here")


def parse(**fit):
    return PreprocessConfig.parse({"data_dir": "data/sample", "fit3dmm": fit})


def test_renderer_defaults_to_auto_and_unknown_names_are_refused():
    cfg, problems = parse()
    assert problems == [] and cfg.fit3dmm.renderer == "auto"
    cfg, problems = parse(renderer="opengl")
    assert cfg is None
    assert problems == [("fit3dmm.renderer", "must be one of auto, nvdiffrast, torch, got 'opengl'")]


def test_the_renderer_does_not_change_the_items_fingerprint():
    """The backends agree to float rounding: switching one must not redo processed clips."""
    assert parse(renderer="torch")[0].fingerprint_fields() == parse(renderer="auto")[0].fingerprint_fields()


def test_auto_on_the_cpu_is_the_torch_rasterizer_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renderers.choose("auto", "cpu").name == "torch"
        assert renderers.choose("torch", "cuda").name == "torch"


@without_nvdiffrast
def test_auto_on_a_gpu_without_nvdiffrast_warns_and_falls_back():
    with pytest.warns(RuntimeWarning, match="nvdiffrast does not import.*pure-PyTorch rasterizer"):
        assert renderers.choose("auto", "cuda").name == "torch"


@without_nvdiffrast
def test_asking_for_nvdiffrast_where_it_cannot_run_says_why():
    with pytest.raises(renderers.RendererUnavailable, match="needs a CUDA device"):
        renderers.choose("nvdiffrast", "cpu")
    with pytest.raises(renderers.RendererUnavailable, match="does not import"):
        renderers.choose("nvdiffrast", "cuda")


def test_the_photometric_fitter_uses_the_configured_renderer():
    model = bfm.from_arrays(template.build("random", grid=10, seed=0))
    cfg = FitConfig(solver="lbfgs", photometric=True)
    assert fit3dmm.ClipFitter(model, cfg, "cpu").face.rasterizer.name == "torch"
    with pytest.raises(renderers.RendererUnavailable):
        fit3dmm.ClipFitter(model, FitConfig(solver="lbfgs", photometric=True, renderer="nvdiffrast"), "cpu")


def test_torch_rasterizer_is_rasterize_then_interpolate():
    screen = torch.tensor([[[2.0, 2.0, 5.0], [12.0, 2.0, 5.0], [2.0, 12.0, 5.0]]])
    triangles = torch.tensor([[0, 1, 2]])
    image, tri_id = render.TorchRasterizer()(screen, triangles, 16, torch.eye(3)[None])
    expected_id, bary = render.rasterize(screen, triangles, 16)
    torch.testing.assert_close(tri_id, expected_id)
    torch.testing.assert_close(image, render.interpolate(torch.eye(3)[None], triangles, expected_id, bary))


def test_nvdiffrast_gets_pixel_centres_unflipped_w_one_and_depth_order_kept():
    """nvdiffrast's pixel j (row i) is centred at clip (2j + 1) / S - 1: screen (x = j, y = i),
    the torch rasterizer's centre, must land there, nearer depths lower, all w = 1."""
    from nerffacespeech.preprocess.render_nvdiffrast import clip_space

    screen = torch.tensor([[[0.0, 0.0, 9.0], [15.0, 3.0, 11.0], [7.5, 15.0, 10.0]]])
    clip = clip_space(screen, 16)
    torch.testing.assert_close(clip[0, :, :2], torch.tensor([[-15 / 16, -15 / 16], [15 / 16, -9 / 16], [0.0, 15 / 16]]))
    assert clip[0, 0, 2] < clip[0, 2, 2] < clip[0, 1, 2] and clip[..., 2].abs().max() < 1
    assert (clip[..., 3] == 1).all()

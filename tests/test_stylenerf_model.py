"""Our StyleNeRF networks: shapes through progressive growing, the renderer's and the camera's
geometry, style mixing, low precision, and sizes against the released checkpoints."""
import math
from dataclasses import replace

import pytest
import torch

from nerffacespeech.configs.stylenerf import PRESETS
from nerffacespeech.models.stylenerf import Discriminator, Generator, build, preset_sizes
from nerffacespeech.models.stylenerf import camera
from nerffacespeech.models.stylenerf.discriminator import minibatch_std
from nerffacespeech.models.stylenerf.renderer import RaySampling, render_rays, sample_pdf

torch.set_num_threads(1)
TINY = replace(PRESETS["tiny"].model, resolution=64, nerf_resolution=16)       # two upsampler octaves


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    return build(TINY)


def test_the_generator_grows_from_the_nerf_resolution_to_the_output(networks):
    g, d = networks
    z = torch.randn(4, TINY.z_dim)
    for stage, size in [(0, 16), (1, 32), (2, 64)]:
        img = g(z, stage=stage, fade=0.5).img
        assert img.shape == (4, 3, size, size) and torch.isfinite(img).all()
        assert d(img, fade=0.5).shape == (4,)


def test_a_fade_of_zero_shows_the_previous_octave_upsampled(networks):
    g, _ = networks
    z, angles = torch.randn(2, TINY.z_dim), torch.zeros(2, 2)
    low = g(z, stage=1, angles=angles, randomize=False).img
    faded = g(z, stage=2, fade=0.0, angles=angles, randomize=False).img
    upsampled = torch.nn.functional.interpolate(low, scale_factor=2.0, mode="bilinear", align_corners=False)
    torch.testing.assert_close(faded, upsampled)


def test_every_generator_weight_gets_a_gradient_from_the_training_losses(networks):
    g, d = networks
    g.zero_grad()
    out = g(torch.randn(4, TINY.z_dim), nerf_path_pixels=16, mix_z=torch.randn(4, TINY.z_dim), mix_cutoff=3)
    (d(out.img).mean() + out.nerf_path_loss).backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_style_mixing_switches_to_the_second_latent_at_the_cutoff(networks):
    g, _ = networks
    z, z2 = torch.randn(2, TINY.z_dim), torch.randn(2, TINY.z_dim)
    ws = g.styles(z, z2, mix_cutoff=5)
    torch.testing.assert_close(ws[:, :5], g.styles(z)[:, :5])
    torch.testing.assert_close(ws[:, 5:], g.styles(z2)[:, 5:])
    torch.testing.assert_close(g.styles(z, z2, mix_cutoff=None), g.styles(z))


def test_the_mixing_cutoff_may_be_a_tensor_so_a_cuda_graph_can_take_it_as_input(networks):
    g, _ = networks
    z, z2 = torch.randn(2, TINY.z_dim), torch.randn(2, TINY.z_dim)
    assert torch.equal(g.styles(z, z2, mix_cutoff=torch.tensor(5)), g.styles(z, z2, mix_cutoff=5))


def test_rendering_constant_features_gives_them_back_whatever_the_density():
    """Foreground and background weights of every ray add up to one."""
    sampling = RaySampling(0.88, 1.12, coarse=6, fine=5, background=3, bg_start=0.5)

    def field(points):
        sigma = torch.rand(points.shape[:2]) * 30
        return sigma, torch.ones(*points.shape[:2], 2)

    origins, dirs = camera.rays(camera.grid_uv(4, torch.device("cpu")),
                                *camera.camera_frames(torch.zeros(2, 2), 1.0), 12.0)
    torch.testing.assert_close(render_rays(origins, dirs, field, field, sampling, randomize=True),
                               torch.ones(2, 16, 2))


def test_hierarchical_samples_fall_where_the_coarse_weights_are():
    bins = torch.linspace(0.0, 1.0, 11).expand(3, 11)
    weights = torch.zeros(3, 10)
    weights[:, 7] = 1.0
    t = sample_pdf(bins, weights, 64, randomize=True)
    assert ((t >= 0.7) & (t <= 0.8)).float().mean() > 0.95


def test_the_central_ray_of_every_camera_passes_through_the_origin():
    angles = torch.tensor([[0.0, 0.0], [0.3, -0.1], [-0.5, 0.2]])
    origins, rotations = camera.camera_frames(angles, 1.0)
    assert torch.allclose(origins.norm(dim=-1), torch.ones(3))
    o, d = camera.rays(torch.zeros(1, 2), origins, rotations, 12.0)
    closest = o - (o * d).sum(-1, keepdim=True) / d.square().sum(-1, keepdim=True) * d
    assert closest.norm(dim=-1).max() < 1e-6
    assert torch.allclose(origins[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)   # yaw 0: on +x


def test_pixel_coordinates_of_single_pixels_match_the_ray_grid():
    res = 8
    rows, cols = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    torch.testing.assert_close(camera.pixel_uv(rows.flatten(), cols.flatten(), res),
                               camera.grid_uv(res, torch.device("cpu")))


def test_minibatch_std_groups_consecutive_samples():
    x = torch.cat([torch.zeros(4, 2, 4, 4), torch.randn(4, 2, 4, 4)])
    y = minibatch_std(x, 4)[:, -1]
    assert torch.all(y[:4] < 1e-3) and torch.all(y[4:] > 0.1)


def test_the_networks_run_in_bfloat16(networks):
    g, d = (n.__class__(TINY).to(torch.bfloat16) for n in networks)
    img = g(torch.randn(4, TINY.z_dim), nerf_path_pixels=4).img
    assert torch.isfinite(img).all() and torch.isfinite(d(img)).all()


def test_paper_presets_are_sized_like_the_released_checkpoints():
    """Released: G of the 256 px pickle 5.2M parameters (StyleNeRF issue #46); the README's 128M,
    153M, 184M match G + D + G_ema in fp32 megabytes. Ours stay within 20% of both."""
    released_mb = {"paper256": 128, "paper512": 153, "paper1024": 184}
    for preset, mb in released_mb.items():
        sizes = preset_sizes(preset)
        assert 0.8 < sizes["G+D+G_ema"] * 4 / 1e6 / mb < 1.2, (preset, sizes)
        assert 0.8 < sizes["G"] / 5.2e6 < 1.3, (preset, sizes)
    assert 1e5 < preset_sizes("tiny")["G+D+G_ema"] < 1e6


def test_the_paper_presets_render_a_32_px_feature_map_with_256_channels_and_upsample():
    cfg = PRESETS["paper1024"].model
    assert (cfg.nerf_resolution, cfg.feature_channels, cfg.upsampler_resolutions) == (32, 256, [64, 128, 256, 512, 1024])
    with torch.device("meta"):
        g, d = Generator(cfg), Discriminator(cfg)
    assert g.stages == 5 and "32" in d.from_rgb and "1024" in d.from_rgb
    assert math.isclose(cfg.fov_degrees, 12.0)

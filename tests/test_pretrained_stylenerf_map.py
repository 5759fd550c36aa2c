"""The official StyleNeRF name map: a synthetic official-format pickle (names and shapes of
facebookresearch/StyleNeRF's stylenerf_ffhq networks, written out below from its
training/networks.py and training/stylenerf.py, random values) exported to safetensors and loaded
into our generator gives the same images as the same official weights mapped in memory; every
official tensor is mapped or dropped on purpose; the encoding reorder is exact.

The official classes cannot be imported here (their CUDA ops, and they are not ours): the pickle
holds a module tree with the official names, pickled the way StyleGAN's persistence does.
"""
from __future__ import annotations

import math
import pickle

import pytest
import torch
from safetensors.torch import load_file

from nerffacespeech.configs.stylenerf import PRESETS
from nerffacespeech.models.stylenerf.discriminator import Discriminator
from nerffacespeech.models.stylenerf.generator import Generator
from nerffacespeech.models.stylenerf.nerf import positional_encoding
from nerffacespeech.pretrained import stylenerf_map, stylenerf_pkl
from nerffacespeech.pretrained.name_map import map_state_dict, shapes_of
from tests.test_pretrained_stylenerf_pkl import make_persistence

CFG = PRESETS["tiny"].model
FILTER = (4, 4)                           # upfirdn2d.setup_filter([1, 3, 3, 1])

TREE_SRC = '''
import torch
from torch_utils import persistence

@persistence.persistent_class
class Network(torch.nn.Module):
    """A module tree holding `tensors` under their dotted names (parameters, or buffers)."""
    def __init__(self, tensors, buffers):
        super().__init__()
        for name, value in tensors.items():
            *path, leaf = name.split(".")
            module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, torch.nn.Module())
                module = module._modules[part]
            if name in buffers:
                module.register_buffer(leaf, value)
            else:
                module.register_parameter(leaf, torch.nn.Parameter(value))
'''


def style_layer(prefix, cin, cout, w_dim, kernel=1, ema=False, filt=True, affine=True):
    """StyleGAN2 SynthesisLayer / Style2Layer / ToRGBLayer / Conv2dLayer parameter shapes."""
    out = {f"{prefix}.weight": (cout, cin, kernel, kernel), f"{prefix}.bias": (cout,)}
    if affine:
        out.update({f"{prefix}.affine.weight": (cin, w_dim), f"{prefix}.affine.bias": (cin,)})
    if filt:
        out[f"{prefix}.resample_filter"] = FILTER
    if ema:
        out[f"{prefix}.w_avg"] = ()
    return out


def official_generator_shapes(cfg) -> dict[str, tuple]:
    w, c = cfg.w_dim, cfg.feature_channels
    shapes = {f"mapping.fc{i}.{k}": s for i in range(cfg.mapping_layers)
              for k, s in (("weight", (w, cfg.z_dim if i == 0 else w)), ("bias", (w,)))}
    shapes["mapping.w_avg"] = (w,)
    for nerf, dims, hidden, blocks in (("fg_nerf", 3, cfg.fg_hidden, cfg.fg_blocks),
                                       ("bg_nerf", 4, cfg.bg_hidden, cfg.bg_blocks)):
        p = f"synthesis.{nerf}"
        shapes.update(style_layer(f"{p}.fc_in", 2 * cfg.frequencies * dims, hidden, w))
        for i in range(blocks - 1):
            shapes.update(style_layer(f"{p}.blocks.{i}", hidden, hidden, w))
        shapes.update(style_layer(f"{p}.sigma_out", hidden, 1, w, filt=False))
        shapes.update(style_layer(f"{p}.feat_out", hidden, c, w, filt=False))
        shapes.update(style_layer(f"{p}.to_rgb", c, 3, w, affine=False))           # Conv2dLayer
    cin = c
    for res in cfg.upsampler_resolutions:
        b, cout = f"synthesis.b{res}", min(cfg.up_channel_base // res, cfg.up_channel_max)
        shapes[f"{b}.resample_filter"] = FILTER
        shapes.update(style_layer(f"{b}.conv0", cin, cout, w, ema=True))
        shapes.update(style_layer(f"{b}.conv0.adapter.0", 2 * cout, cout // 4, w, affine=False))
        shapes.update(style_layer(f"{b}.conv0.adapter.1", cout // 4, cout, w, affine=False))
        shapes.update(style_layer(f"{b}.conv1", cout, cout, w, ema=True))
        shapes.update(style_layer(f"{b}.torgb", cout, 3, w, filt=False))
        cin = cout
    shapes["synthesis.alpha"] = ()
    return shapes


def official_discriminator_shapes(cfg) -> dict[str, tuple]:
    ch = lambda r: min(cfg.d_channel_base // r, cfg.d_channel_max)
    shapes, res = {"alpha": ()}, cfg.resolution
    while res >= 8:
        shapes[f"b{res}.resample_filter"] = FILTER
        shapes.update(style_layer(f"b{res}.fromrgb", 3, ch(res), 0, affine=False))
        shapes.update(style_layer(f"b{res}.conv0", ch(res), ch(res), 0, kernel=3, affine=False))
        shapes.update(style_layer(f"b{res}.conv1", ch(res), ch(res // 2), 0, kernel=3, affine=False))
        res //= 2
    shapes.update(style_layer("b4.fromrgb", 3, ch(4), 0, affine=False))
    shapes.update(style_layer("b4.conv", ch(4) + 1, ch(4), 0, kernel=3, affine=False))
    shapes.update({"b4.fc.weight": (ch(4), ch(4) * 16), "b4.fc.bias": (ch(4),),
                   "b4.out.weight": (1, ch(4)), "b4.out.bias": (1,)})
    return shapes


def random_state(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.ones(shape) if name.endswith(("w_avg", "alpha")) and not shape else
                   torch.randn(shape, generator=g) * 0.5) for name, shape in shapes.items()}


@pytest.fixture
def official_pickle(tmp_path, monkeypatch):
    """ffhq-style pickle dict(G, G_ema, D, augment_pipe, training_set_kwargs) of official names."""
    import sys
    import types

    sources = {}
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = make_persistence(sources)
    monkeypatch.setitem(sys.modules, "torch_utils", torch_utils)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", torch_utils.persistence)
    module = types.ModuleType("training.networks")
    sources["training.networks"] = TREE_SRC
    monkeypatch.setitem(sys.modules, "training.networks", module)
    exec(TREE_SRC, module.__dict__)

    g_state = random_state(official_generator_shapes(CFG), 0)
    d_state = random_state(official_discriminator_shapes(CFG), 1)
    g_buffers = {n for n in g_state if n.endswith(("resample_filter", "w_avg", "alpha"))}
    d_buffers = {n for n in d_state if n.endswith(("resample_filter", "alpha"))}
    G = module.Network(g_state, g_buffers)
    D = module.Network(d_state, d_buffers)
    path = tmp_path / "ffhq_1024.pkl"
    path.write_bytes(pickle.dumps(dict(G=G, G_ema=G, D=D, augment_pipe=None,
                                       training_set_kwargs=dict(resolution=CFG.resolution)), protocol=4))
    return path, g_state, d_state


def fresh_generator() -> Generator:
    torch.manual_seed(7)                      # what no official tensor fills starts the same
    return Generator(CFG).eval()


def test_the_exported_pickle_gives_the_images_of_the_same_weights_mapped_directly(official_pickle, tmp_path):
    path, g_state, _ = official_pickle
    rules = stylenerf_map.generator_rules(CFG)
    from_pkl, direct = fresh_generator(), fresh_generator()
    report = stylenerf_pkl.export(path, tmp_path / "G_ema.safetensors", shapes_of(from_pkl), rules,
                                  allow_missing=stylenerf_map.GENERATOR_ALLOW_MISSING)
    assert not report.unmapped and not report.shape_mismatches and not report.unknown_target
    assert all(name.startswith(("upsampler.blocks.0.conv0.", "upsampler.blocks.0.bias0")) for name in report.missing)
    assert sorted(n for n in report.dropped if "resample_filter" not in n) == sorted(
        [n for n in g_state if ".conv0." in n and "resample_filter" not in n]
        + ["synthesis.alpha", f"synthesis.b{CFG.resolution}.conv1.w_avg",
           "synthesis.bg_nerf.to_rgb.weight", "synthesis.bg_nerf.to_rgb.bias"])
    from_pkl.load_state_dict(load_file(tmp_path / "G_ema.safetensors"), strict=False)
    direct.load_state_dict(map_state_dict(g_state, shapes_of(direct), rules).mapped, strict=False)
    fresh = fresh_generator()
    assert not torch.equal(fresh.mapping.layers[0].weight, from_pkl.mapping.layers[0].weight)

    z = torch.randn(2, CFG.z_dim, generator=torch.Generator().manual_seed(3))
    angles = torch.tensor([[math.pi / 2 + 0.1, math.pi / 2], [math.pi / 2 - 0.2, math.pi / 2 + 0.05]])
    with torch.no_grad():
        a = from_pkl(z, angles=angles, randomize=False).img
        b = direct(z, angles=angles, randomize=False).img
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert not torch.equal(a, fresh(z, angles=angles, randomize=False).img)


def test_the_discriminator_maps_with_only_our_resnet_skips_left_at_init(official_pickle, tmp_path):
    path, d_state, ours = official_pickle[0], official_pickle[2], Discriminator(CFG)
    report = stylenerf_pkl.export(path, tmp_path / "D.safetensors", shapes_of(ours),
                                  stylenerf_map.discriminator_rules(CFG), which="D",
                                  allow_missing=stylenerf_map.DISCRIMINATOR_ALLOW_MISSING)
    assert all(name.endswith(".skip.weight") for name in report.missing) and report.missing
    assert len(report.mapped) + len(report.dropped) == len(d_state)
    ours.load_state_dict(load_file(tmp_path / "D.safetensors"), strict=False)
    torch.testing.assert_close(ours.fc.weight, d_state["b4.fc.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("dims", [3, 4])
def test_the_encoding_reorder_gives_our_layer_the_official_layer_s_input(dims):
    """official fc_in(enc_official(p)) == our layer 0 weight @ enc_ours(p), for the reordered weight."""
    octaves = 3
    p = torch.randn(5, dims)
    official_enc = torch.cat([torch.cat([torch.sin((2 ** i) * math.pi * p), torch.cos((2 ** i) * math.pi * p)], -1)
                              for i in range(octaves)], -1)             # dnnlib/geometry.py, 'normal'
    weight = torch.randn(7, 2 * octaves * dims, 1, 1)
    ours = stylenerf_map._then(stylenerf_map.squeeze_1x1, stylenerf_map.posenc_order(dims, octaves, 1))(weight)
    torch.testing.assert_close(positional_encoding(p, octaves) @ ours.T, official_enc @ weight[:, :, 0, 0].T)

"""Official-format StyleNeRF pickles are read without running their code; hostile pickles are refused.

The pickles here are made the way StyleGAN's training loop makes them: `pickle.dump` of
`dict(G, D, G_ema, augment_pipe, training_set_kwargs)`, where every network class is wrapped by a
`torch_utils.persistence.persistent_class` stand-in whose `__reduce__` returns
`(_reconstruct_persistent_obj, (meta,))` with `meta = dict(type, version, module_src, class_name,
state)`, and tensors are pickled by torch's own reducers (`_rebuild_parameter`,
`_rebuild_tensor_v2`, `_load_from_bytes`). Loading them with plain `pickle.load` would exec the
embedded source, as the control test shows.
"""
from __future__ import annotations

import collections
import copy
import io
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nerffacespeech.pretrained import safe_pickle, stylenerf_pkl
from nerffacespeech.pretrained.name_map import MappingError, Rule, map_state_dict, shapes_of
from nerffacespeech.pretrained.safe_pickle import UnsafePickleError

torch.set_num_threads(1)

# The "official" networks, in StyleGAN naming (mapping.fcN, w_avg, synthesis.bRES.convN.affine, ...).
OFFICIAL_SRC = '''
import numpy as np
import torch
from torch_utils import persistence

@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, lr_multiplier=1.0, activation="linear"):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.randn([out_features]))
        self.weight_gain = lr_multiplier / np.sqrt(in_features)

    def forward(self, x):
        x = torch.nn.functional.linear(x, self.weight * self.weight_gain, self.bias)
        return torch.nn.functional.leaky_relu(x, 0.2) if self.activation == "lrelu" else x

@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, w_dim, num_ws, num_layers=2):
        super().__init__()
        self.num_ws = num_ws
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(z_dim if idx == 0 else w_dim, w_dim, 0.01, "lrelu"))
        self.num_layers = num_layers
        self.register_buffer("w_avg", torch.randn([w_dim]))

    def forward(self, z):
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x.unsqueeze(1).repeat([1, self.num_ws, 1])

@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    def __init__(self, w_dim, in_channels, out_channels):
        super().__init__()
        self.affine = FullyConnectedLayer(w_dim, in_channels)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        self.bias = torch.nn.Parameter(torch.randn([out_channels]))
        self.register_buffer("resample_filter", torch.tensor([1.0, 3.0, 3.0, 1.0]))
        self.register_buffer("scratch", torch.zeros([2]), persistent=False)

    def forward(self, x, w):
        styles = self.affine(w)
        weight = self.weight.unsqueeze(0) * styles[:, None, :, None, None]
        weight = weight * (weight.square().sum([2, 3, 4], keepdim=True) + 1e-8).rsqrt()
        out = [torch.nn.functional.conv2d(x[i:i + 1], weight[i], padding=1) for i in range(x.shape[0])]
        return torch.nn.functional.leaky_relu(torch.cat(out) + self.bias[None, :, None, None], 0.2)

@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, resolution, channels):
        super().__init__()
        self.resolution = resolution
        self.const = torch.nn.Parameter(torch.randn([channels, 4, 4]))
        self.layers = torch.nn.ModuleList([SynthesisLayer(w_dim, channels, channels) for _ in range(2)])
        self.torgb = torch.nn.Conv2d(channels, 3, 1)

    def forward(self, ws):
        x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i])
        x = torch.nn.functional.interpolate(x, size=self.resolution, mode="nearest")
        return self.torgb(x)

@persistence.persistent_class
class Generator(torch.nn.Module):
    def __init__(self, z_dim, w_dim, img_resolution, mapping_kwargs={}, **synthesis_kwargs):
        super().__init__()
        self.z_dim = z_dim
        self.img_resolution = img_resolution
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, **synthesis_kwargs)
        self.mapping = MappingNetwork(z_dim, w_dim, num_ws=2, **mapping_kwargs)

    def forward(self, z):
        return self.synthesis(self.mapping(z))

@persistence.persistent_class
class Discriminator(torch.nn.Module):
    def __init__(self, img_resolution, channels):
        super().__init__()
        self.b8 = torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3), torch.nn.LeakyReLU(0.2))
        self.out = FullyConnectedLayer(channels, 1)
'''

G_KWARGS = dict(z_dim=8, w_dim=16, img_resolution=8, mapping_kwargs={"num_layers": 2}, channels=4)


def make_persistence(src_of_module):
    """A `torch_utils.persistence` module that pickles like StyleGAN's (and executes on load)."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        module = types.ModuleType(f"_imported_module_{len(src_of_module)}")
        src_of_module[module.__name__] = meta["module_src"]
        exec(meta["module_src"], module.__dict__)
        cls = persistent_class(module.__dict__[meta["class_name"]], meta["module_src"])
        obj = cls.__new__(cls)
        obj.__setstate__(meta["state"])
        return obj

    def persistent_class(orig_class, module_src=None):
        if getattr(orig_class, "_is_persistent", False):
            return orig_class
        module_src = module_src or src_of_module[orig_class.__module__]

        class Decorator(orig_class):
            _is_persistent = True

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self._init_args = copy.deepcopy(args)
                self._init_kwargs = copy.deepcopy(kwargs)

            def __reduce__(self):
                fields = list(super().__reduce__())
                fields += [None] * max(3 - len(fields), 0)
                meta = dict(type="class", version=6, module_src=module_src,
                            class_name=orig_class.__name__, state=fields[2])
                return (_reconstruct_persistent_obj, (meta,), None)

        Decorator.__name__ = orig_class.__name__
        return Decorator

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    persistence.persistent_class = persistent_class
    return persistence


@pytest.fixture
def official(monkeypatch):
    """Exec OFFICIAL_SRC as the module `training.networks` with the persistence stand-in installed."""
    sources = {}
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = make_persistence(sources)
    monkeypatch.setitem(sys.modules, "torch_utils", torch_utils)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", torch_utils.persistence)

    def build(src=OFFICIAL_SRC):
        module = types.ModuleType("training.networks")
        sources["training.networks"] = src
        monkeypatch.setitem(sys.modules, "training.networks", module)
        exec(src, module.__dict__)
        return module

    return build


def snapshot_bytes(networks, protocol):
    torch.manual_seed(0)
    G = networks.Generator(**G_KWARGS).eval().requires_grad_(False)
    D = networks.Discriminator(img_resolution=8, channels=4).eval()
    data = dict(training_set_kwargs=dict(path="ffhq.zip", resolution=8, xflip=False),
                G=G, D=D, G_ema=copy.deepcopy(G), augment_pipe=None)
    return G, D, pickle.dumps(data, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_state_dicts_and_init_kwargs_come_out_exactly(official, tmp_path, protocol):
    G, D, data = snapshot_bytes(official(), protocol)
    (tmp_path / "net.pkl").write_bytes(data)
    snap = stylenerf_pkl.read(tmp_path / "net.pkl")
    assert list(snap.networks) == ["G_ema", "G", "D"]
    for name, module in (("G_ema", G), ("G", G), ("D", D)):
        expected = module.state_dict()
        got = snap.networks[name].state_dict
        assert list(got) == list(expected)          # same names, same order, no non-persistent buffers
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    g = snap.networks["G_ema"]
    assert g.class_name == "Generator" and g.init_kwargs == G_KWARGS
    assert g.module_classes["synthesis.layers"] == "torch.nn.modules.container.ModuleList"
    assert snap.extras == {"training_set_kwargs": dict(path="ffhq.zip", resolution=8, xflip=False),
                           "augment_pipe": None}


def test_plain_pickle_would_execute_the_embedded_source_but_the_safe_reader_does_not(official, tmp_path):
    marker = tmp_path / "executed"
    src = f"open({str(marker)!r}, 'w').close()\n" + OFFICIAL_SRC
    _, _, data = snapshot_bytes(official(src), 4)
    (tmp_path / "net.pkl").write_bytes(data)
    marker.unlink()                                # building and deep-copying the network ran it

    stylenerf_pkl.read(tmp_path / "net.pkl")
    assert not marker.exists()
    pickle.loads(data)                             # control: what pickle.load would do
    assert marker.exists()


# ------------------------------------------------------------------ round trip into a generator

# "Our" generator: the same computation under other names, as our StyleNeRF will have.
OURS_SRC = OFFICIAL_SRC.replace("from torch_utils import persistence", "") \
    .replace("@persistence.persistent_class", "")

OUR_RULES = (
    Rule(r"mapping\.fc(\d+)\.(weight|bias)", r"style.layers.\1.\2"),
    Rule(r"mapping\.w_avg", r"style.w_avg"),
    Rule(r"synthesis\.layers\.(\d+)\.affine\.(weight|bias)", r"render.blocks.\1.modulation.\2"),
    Rule(r"synthesis\.layers\.(\d+)\.(weight|bias)", r"render.blocks.\1.conv_\2"),
    Rule(r"synthesis\.layers\.\d+\.resample_filter", None, "recomputed by our layers"),
    Rule(r"synthesis\.(const|torgb\.weight|torgb\.bias)", r"render.\1"),
)


def our_generator():
    """Build OURS_SRC's Generator, then rename its tensors to our layout via a thin wrapper."""
    module = types.ModuleType("ours")
    exec(OURS_SRC, module.__dict__)
    inner = module.Generator(**G_KWARGS).eval()

    class Ours(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.style = torch.nn.Module()
            self.style.layers = torch.nn.ModuleList([inner.mapping.fc0, inner.mapping.fc1])
            self.style.register_buffer("w_avg", inner.mapping.w_avg)
            self.render = torch.nn.Module()
            self.render.const = inner.synthesis.const
            self.render.torgb = inner.synthesis.torgb
            self.render.blocks = torch.nn.ModuleList()
            for layer in inner.synthesis.layers:
                block = torch.nn.Module()
                block.modulation = layer.affine
                block.conv_weight, block.conv_bias = layer.weight, layer.bias
                self.render.blocks.append(block)
            self.inner = [inner]                    # not a submodule: only for forward

        def forward(self, z):
            return self.inner[0](z)

    return Ours()


def test_round_trip_into_our_generator_matches_the_official_output(official, tmp_path):
    G, _, data = snapshot_bytes(official(), 4)
    (tmp_path / "net.pkl").write_bytes(data)
    ours_from_pkl, ours_direct = our_generator(), our_generator()

    report = stylenerf_pkl.export(tmp_path / "net.pkl", tmp_path / "G_ema.safetensors",
                                  shapes_of(ours_from_pkl), OUR_RULES)
    assert report.complete and len(report.dropped) == 2
    ours_from_pkl.load_state_dict(load_file(tmp_path / "G_ema.safetensors"), strict=True)
    direct = map_state_dict(G.state_dict(), shapes_of(ours_direct), OUR_RULES)
    ours_direct.load_state_dict(direct.mapped, strict=True)

    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = G(z)
        assert torch.equal(ours_from_pkl(z), expected)
        assert torch.equal(ours_direct(z), expected)


def test_the_exported_file_records_its_source(official, tmp_path):
    _, _, data = snapshot_bytes(official(), 4)
    (tmp_path / "ffhq_1024.pkl").write_bytes(data)
    ours = our_generator()
    stylenerf_pkl.export(tmp_path / "ffhq_1024.pkl", tmp_path / "out.safetensors", shapes_of(ours), OUR_RULES)
    from safetensors import safe_open

    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        meta = f.metadata()
    import hashlib

    assert meta == {"source": "ffhq_1024.pkl", "network": "G_ema", "source_sha256": hashlib.sha256(data).hexdigest()}


def test_mapping_reports_unmapped_missing_and_shape_mismatches(official, tmp_path):
    G, _, _ = snapshot_bytes(official(), 4)
    shapes = shapes_of(our_generator())
    shapes["render.const"] = (4, 8, 8)              # a model whose const differs
    shapes["render.extra"] = (1,)                   # and has a tensor the pickle lacks
    report = map_state_dict(G.state_dict(), shapes, OUR_RULES[:-1] + (Rule(r"synthesis\.const", "render.const"),))
    assert report.shape_mismatches == [("synthesis.const", "render.const", (4, 4, 4), (4, 8, 8))]
    assert report.unmapped == ["synthesis.torgb.weight", "synthesis.torgb.bias"]
    assert set(report.missing) == {"render.const", "render.extra", "render.torgb.weight", "render.torgb.bias"}
    with pytest.raises(MappingError, match="shape: synthesis.const"):
        report.require_complete()


# ------------------------------------------------------------------ hostile pickles


class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def hostile_cases(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": (Payload(os.system, f"touch {marker}"), "system"),
        "builtins.eval": (Payload(eval, touch), "builtins.eval"),
        "builtins.exec": (Payload(exec, touch), "builtins.exec"),
        "subprocess.Popen": (Payload(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        "getattr": (Payload(getattr, subprocess.Popen, "__init__"), "builtins.getattr"),
    }


@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "getattr"])
def test_a_top_level_hostile_call_is_refused_naming_the_global(tmp_path, case):
    marker = tmp_path / "pwned"
    payload, name = hostile_cases(marker)[case]
    with pytest.raises(UnsafePickleError, match=name):
        safe_pickle.load(io.BytesIO(pickle.dumps({"G_ema": payload}, protocol=4)))
    assert not marker.exists()


@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_a_hostile_call_nested_in_a_network_state_dict_is_refused(official, tmp_path, case):
    marker = tmp_path / "pwned"
    payload, name = hostile_cases(marker)[case]
    networks = official()
    G = networks.Generator(**G_KWARGS)
    G.synthesis.layers[1]._buffers["resample_filter"] = payload
    (tmp_path / "net.pkl").write_bytes(pickle.dumps({"G_ema": G}, protocol=3))
    with pytest.raises(UnsafePickleError, match=name):
        stylenerf_pkl.read(tmp_path / "net.pkl")
    assert not marker.exists()


def test_a_hostile_payload_inside_an_embedded_storage_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    inner = pickle.dumps(Payload(os.system, f"touch {marker}"), protocol=2)

    class EvilStorage:
        def __reduce__(self):
            from torch.storage import _load_from_bytes
            return _load_from_bytes, (inner,)

    with pytest.raises(UnsafePickleError, match="embedded storage"):
        safe_pickle.load(io.BytesIO(pickle.dumps([EvilStorage()], protocol=4)))
    assert not marker.exists()


def test_setting_state_on_an_allowed_callable_is_refused():
    build_on_ordered_dict = b"\x80\x04ccollections\nOrderedDict\n}b."   # GLOBAL, EMPTY_DICT, BUILD
    with pytest.raises(UnsafePickleError, match="refused to set state"):
        safe_pickle.load(io.BytesIO(build_on_ordered_dict))


def test_a_reference_to_an_unknown_global_is_inert_until_called():
    obj = safe_pickle.load(io.BytesIO(pickle.dumps({"kind": collections.Counter}, protocol=4)))
    assert obj["kind"].path == "collections.Counter"
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        obj["kind"]()


def test_numpy_scalars_and_arrays_in_init_kwargs_are_read_as_data():
    kwargs = {"scale": np.float32(0.5), "table": np.arange(6, dtype=np.int64).reshape(2, 3)}
    plain = stylenerf_pkl.to_plain(safe_pickle.load(io.BytesIO(pickle.dumps(kwargs, protocol=3))))
    assert plain["scale"] == 0.5 and np.array_equal(plain["table"], kwargs["table"])


def test_numpy_object_arrays_are_refused():
    data = pickle.dumps(np.array([print], dtype=object), protocol=4)
    with pytest.raises(UnsafePickleError, match="numpy"):
        stylenerf_pkl.to_plain(safe_pickle.load(io.BytesIO(data)))


def test_omegaconf_init_kwargs_become_plain_dicts():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"mapping_kwargs": {"num_layers": 8},
                                      "synthesis_kwargs": {"camera_kwargs": {"range_v": [1.4, 1.7], "fov": 12}}})
    kwargs = copy.deepcopy(dict(**cfg))
    plain = stylenerf_pkl.to_plain(safe_pickle.load(io.BytesIO(pickle.dumps(kwargs, protocol=3))))
    assert plain == {"mapping_kwargs": {"num_layers": 8},
                     "synthesis_kwargs": {"camera_kwargs": {"range_v": [1.4, 1.7], "fov": 12}}}

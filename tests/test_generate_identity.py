"""Identities: seeds with truncation, and a face photo projected into W (tiny random generator)."""
import numpy as np
import torch
from PIL import Image

from nerffacespeech.configs.stylenerf import PRESETS
from nerffacespeech.generate import identity
from nerffacespeech.generate.__main__ import main
from nerffacespeech.models.stylenerf.generator import Generator
from tests.generate_helpers import ROOT, SPEECH, files_in

ASTRONAUT = ROOT / "data" / "sample" / "images" / "astronaut" / "00001" / "00001.jpg"


def _generator():
    torch.manual_seed(0)
    g = Generator(PRESETS["tiny"].model).eval().requires_grad_(False)
    g.w_avg.copy_(torch.randn(g.cfg.w_dim))
    return g


def test_seed_styles_are_reproducible_and_truncation_pulls_toward_w_avg():
    g = _generator()
    a, b = identity.seed_styles(g, 7, 1.0), identity.seed_styles(g, 7, 1.0)
    assert a.shape == (1, g.num_ws, g.cfg.w_dim) and torch.equal(a, b)
    assert not torch.equal(a, identity.seed_styles(g, 8, 1.0))
    assert torch.allclose(identity.seed_styles(g, 7, 0.7), g.w_avg.lerp(a[0, 0], 0.7)[None, None], atol=1e-5)
    assert torch.allclose(identity.seed_styles(g, 7, 0.0)[0, 0], g.w_avg)


def test_projection_of_a_real_face_lowers_the_reconstruction_loss():
    g = _generator()
    photo, points = identity.find_face(ASTRONAUT)
    target = identity.aligned_face(photo, points, g.cfg.resolution)
    ws, losses = identity.project(g, target, steps=30, lr=0.03)
    assert ws.shape == (1, g.num_ws, g.cfg.w_dim)
    assert losses[-1] < 0.8 * losses[0], losses


def test_a_photo_without_a_face_is_refused_before_anything_is_written(tmp_path, capsys):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((128, 128, 3), 120, np.uint8)).save(blank)
    out = tmp_path / "out"
    code = main(["--test_data", str(SPEECH), "--outdir", str(out), "--face-image", str(blank),
                 "--audio2nerf", str(tmp_path / "none.ckpt")])
    assert code == 1 and "no_face: wall.png: no face found" in capsys.readouterr().err
    assert files_in(out) == []

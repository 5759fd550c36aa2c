"""audio2nerf networks, ray deformation, lip loss and config check (unit tests, CPU, seconds)."""
import torch

from nerffacespeech.configs.audio2nerf import ModelConfig, check
from nerffacespeech.models.audio2nerf import generator_source
from nerffacespeech.models.audio2nerf.deform import RayDeformation
from nerffacespeech.models.audio2nerf.face import PX_PER_UNIT, FaceBasis, lip_distance, load_face_basis
from nerffacespeech.models.audio2nerf.lipaint import LipaintNet
from nerffacespeech.models.audio2nerf.network import Audio2NeRF, parameter_counts
from nerffacespeech.models.audio2nerf.talking_head import TalkingHead
from nerffacespeech.pretrained.sadtalker import OFFICIAL_SHAPES


def test_seed_guide_networks_have_the_published_shapes():
    net = Audio2NeRF(ModelConfig())                      # audio_dim 256, nerf_dim 512
    dims = [(m.in_features, m.out_features) for m in net.lipaint.mlp if isinstance(m, torch.nn.Linear)]
    assert dims == [(576, 512), (512, 512), (512, 512), (512, 512)]
    ours = {k: tuple(v.shape) for k, v in net.audio_encoder.state_dict().items()}
    for name, shape in OFFICIAL_SHAPES.items():          # SadTalker's audio2exp encoder loads 1:1
        if name.startswith("audio2exp.audio_encoder."):
            assert ours[name.replace("audio2exp.audio_encoder.", "blocks.")] == shape
    net.eval()
    ref = torch.randn(64)
    exps = net.expressions(torch.randn(6, 80, 16), ref)
    assert exps.shape == (6, 64) and torch.allclose(exps, ref.expand(6, -1))      # starts at the reference
    assert net.expressions(torch.randn(6, 1, 80, 16), ref, torch.rand(6)).shape == (6, 64)
    print(parameter_counts(net))


def test_lipaint_is_the_identity_at_the_reference_expression():
    torch.manual_seed(0)
    net = LipaintNet(32)
    torch.nn.init.normal_(net.mlp[-1].weight)            # a trained-looking last layer
    ws, exp, ref = torch.randn(3, 5, 32), torch.randn(3, 64), torch.randn(64)
    assert torch.equal(net(ws, ref.expand(3, -1), ref), ws)
    assert not torch.allclose(net(ws, exp, ref), ws)


def _one_vertex_face() -> FaceBasis:
    """Two vertices: vertex 0 moves +x (model units) with coefficient 0, vertex 1 never moves."""
    basis = torch.zeros(2, 3, 64)
    basis[0, 0, 0] = 1.0
    mean = torch.tensor([[0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    return FaceBasis(mean, basis, torch.zeros(68, dtype=torch.long), "test")


def test_a_point_near_a_displaced_vertex_moves_with_it_and_far_points_do_not():
    face = _one_vertex_face()
    deform = RayDeformation(face, sigma=0.01, max_vertices=2)
    exp, ref = torch.zeros(1, 64), torch.zeros(64)
    exp[0, 0] = 0.1                                       # vertex 0 moves 0.1 model units = 0.01 world units
    moved_vertex = face.world(torch.tensor([0.1, 0.0, 0.0]))
    far = face.world(torch.tensor([0.0, 2.5, 0.0]))       # between the vertices, 0.25 world units away
    points = torch.stack([moved_vertex, moved_vertex + 0.002, far])[None]
    warped = deform.warp(exp, ref)(points)[0]
    # the field is queried where the vertex came from: the point at the moved vertex samples the origin
    assert torch.allclose(warped[0], torch.zeros(3), atol=1e-6)
    assert (warped[1] - points[0, 1]).norm() > 0.8 * 0.01          # a nearby point follows, slightly less
    assert torch.allclose(warped[2], far)                            # far points don't move
    assert torch.equal(deform.warp(torch.zeros(1, 64), ref)(points), points)   # reference: no motion


def test_lip_loss_is_the_mouth_landmark_displacement_in_pixels():
    face = load_face_basis("synthetic")
    exp = torch.zeros(2, 64)
    assert torch.equal(lip_distance(face, exp, exp), torch.zeros(2))
    other = exp.clone()
    other[:, 3] = 0.5
    expected = (face.exp_basis[face.keypoints[48:68], :, 3] * 0.5).norm(dim=-1).mean() * PX_PER_UNIT
    assert torch.allclose(lip_distance(face, other, exp), expected.expand(2))
    assert float(expected) > 0.1


def test_talking_head_renders_frames_that_follow_the_expression():
    torch.manual_seed(0)
    net = Audio2NeRF(ModelConfig(audio_dim=32, nerf_dim=128, encoder_width=0.25))
    generator = generator_source.build({"kind": "random", "preset": "tiny", "seed": 0})
    head = TalkingHead(net, generator, load_face_basis("synthetic"), "tiny", torch.device("cpu"))
    ws = generator.styles(torch.randn(2, 128))
    ref, angles = head.neutral_expression(), torch.zeros(2, 2)
    still = head.render(ws, ref.expand(2, -1), ref, angles)
    assert still.shape == (2, 3, 32, 32) and still.abs().max() <= 1
    assert torch.equal(still, generator(ws=ws, angles=angles, randomize=False).img.clamp(-1, 1))
    talking = head.render(ws, torch.full((2, 64), 2.0), ref, angles)
    assert not torch.allclose(still, talking)


def test_config_check_reports_fields():
    assert check({"audio_dim": 256, "nerf_dim": 512, "lr": 1e-4}, {"world_size": 8, "device": "cuda"}) == []
    problems = dict(check({"audio_dim": 0, "bogus": 1, "render_batch": 99}, {"world_size": 2}))
    assert "bogus" in problems
    problems = dict(check({"audio_dim": 0, "render_batch": 99}, {"world_size": 2}))
    assert set(problems) == {"audio_dim", "render_batch"}
    assert dict(check({"precision": "fp16", "batch_total": 10}, {"world_size": 2, "device": "cpu"})).keys() == \
        {"precision", "batch_total"}

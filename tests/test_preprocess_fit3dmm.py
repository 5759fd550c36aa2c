"""3DMM fitting recovers known coefficients of a synthetic morphable model in the BFM09 layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nerffacespeech.configs.preprocess import FitConfig
from nerffacespeech.preprocess import bfm, camera, fit3dmm, render, template


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bfm") / "BFM09_model_info.mat"
    bfm.save_mat(path, template.build("random", grid=20, seed=0))
    return path


@pytest.fixture(scope="module")
def clip(model_file):
    """12 frames of a synthetic face turning (yaw ±14°) and moving its expression."""
    torch.set_num_threads(2)
    model = bfm.load_bfm(model_file)
    rng = np.random.default_rng(1)
    t = np.arange(12) / 12
    true = torch.zeros(12, 257)
    true[:, :80] = torch.tensor(rng.normal(size=80) * 0.5, dtype=torch.float32)
    true[:, 80:84] = torch.tensor(np.sin(2 * np.pi * t)[:, None] * rng.normal(size=4), dtype=torch.float32)
    true[:, 224] = torch.tensor(0.1 * np.cos(2 * np.pi * t), dtype=torch.float32)
    true[:, 225] = torch.tensor(0.25 * np.sin(2 * np.pi * t), dtype=torch.float32)
    true[:, 256] = 0.1
    face = fit3dmm.FaceModel(model, 224)
    with torch.no_grad():
        image, _ = face.render(bfm.split(true))
        marks = face.landmarks(bfm.split(true))
    return model, true, (image.numpy() * 255).round().astype(np.uint8), marks.numpy()


def test_the_mat_layout_round_trips_and_is_checked(model_file):
    mat = bfm.load_mat(model_file)
    assert bfm.layout_problems(mat) == []
    del mat["exBase"]
    assert bfm.layout_problems(mat) == ["missing keys: exBase"]
    model = bfm.load_bfm(model_file)
    assert model.keypoints.tolist() == list(range(68)) and int(model.triangles.min()) == 0


def test_fitting_recovers_pose_and_landmarks_to_under_a_pixel(clip):
    model, true, crops, marks = clip
    cfg = FitConfig(rigid_steps=100, nonrigid_steps=200, warm_steps=150, batch_frames=6)
    result = fit3dmm.ClipFitter(model, cfg).fit(crops, marks)
    assert result.coeffs.shape == (12, 257)
    assert result.landmark_error.max() < 1.0
    angle_error = np.degrees(np.abs(result.coeffs[:, 224:227] - true[:, 224:227].numpy())).max()
    assert angle_error < 4.0
    fitted_yaw = camera.stylenerf_pose(result.coeffs[:, 224:227], result.coeffs[:, 254:257]).angles[:, 0]
    true_yaw = camera.stylenerf_pose(true[:, 224:227].numpy(), true[:, 254:257].numpy()).angles[:, 0]
    assert np.corrcoef(fitted_yaw, true_yaw)[0, 1] > 0.99


def test_frontal_head_gives_stylenerf_frontal_camera():
    pose = camera.stylenerf_pose(np.zeros((1, 3)), np.zeros((1, 3)))
    np.testing.assert_allclose(pose.angles[0], [np.pi / 2, np.pi / 2, 1.0], atol=1e-9)
    np.testing.assert_allclose(pose.cam2world[0, :3, 3], [0, 10, 0], atol=1e-9)


def test_head_turned_to_the_viewer_right_moves_the_camera_the_other_way():
    left = camera.stylenerf_pose(np.array([[0.0, 0.2, 0.0]]), np.zeros((1, 3))).angles[0, 0]
    right = camera.stylenerf_pose(np.array([[0.0, -0.2, 0.0]]), np.zeros((1, 3))).angles[0, 0]
    assert left != pytest.approx(right) and abs((left + right) / 2 - np.pi / 2) < 1e-9


def test_rasterizer_covers_a_triangle_and_interpolates_with_gradients():
    screen = torch.tensor([[[2.0, 2.0, 5.0], [12.0, 2.0, 5.0], [2.0, 12.0, 5.0]]], requires_grad=True)
    triangles = torch.tensor([[0, 1, 2]])
    tri_id, bary = render.rasterize(screen, triangles, 16)
    assert int((tri_id == 0).sum()) == 66                     # lattice points with x+y ≤ 14 in [2,12]²
    colour = render.interpolate(torch.eye(3)[None], triangles, tri_id, bary)
    torch.testing.assert_close(colour[0, 4, 6], torch.tensor([0.4, 0.4, 0.2]))
    colour[..., 1].sum().backward()
    assert screen.grad.abs().sum() > 0


def test_nearer_triangle_wins_the_depth_test():
    near = [[0.0, 0.0, 1.0], [9.0, 0.0, 1.0], [0.0, 9.0, 1.0]]
    far = [[0.0, 0.0, 2.0], [9.0, 0.0, 2.0], [0.0, 9.0, 2.0]]
    for order in ((near, far), (far, near)):
        screen = torch.tensor([order[0] + order[1]])
        tri_id, _ = render.rasterize(screen, torch.tensor([[0, 1, 2], [3, 4, 5]]), 10)
        assert int(tri_id[0, 1, 1]) == (0 if order[0] is near else 1)

"""SWD tells real faces from noise and from blurred faces; FID's Inception runs and loads weights
from a local file (random weights here: the real ones cannot be downloaded)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerffacespeech.metrics import swd
from nerffacespeech.metrics.fid import frechet_distance, load_inception

torch.set_num_threads(1)
FACES = sorted((Path(__file__).resolve().parents[1] / "data" / "sample" / "faces" / "lfw").glob("*.png"))


def faces(indices) -> torch.Tensor:
    arrays = [np.asarray(Image.open(FACES[i]).convert("RGB"), dtype=np.float32) for i in indices]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


def descriptors(images, seed):
    return swd.patch_descriptors(images, torch.Generator().manual_seed(seed))


def test_the_laplacian_pyramid_reconstructs_the_image():
    images = faces(range(4))
    levels = swd.laplacian_pyramid(images)
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]
    rebuilt = levels[-1]
    for level in reversed(levels[:-1]):
        rebuilt = swd._up(rebuilt) + level
    torch.testing.assert_close(rebuilt, images)


def test_swd_ranks_other_faces_closer_than_blurred_faces_and_noise():
    real = descriptors(faces(range(0, 30)), 1)
    others = swd.swd(real, descriptors(faces(range(50, 80)), 2))
    small = torch.nn.functional.avg_pool2d(faces(range(50, 80)), 4)
    blurred = swd.swd(real, descriptors(torch.nn.functional.interpolate(small, size=64, mode="bilinear"), 2))
    noise = swd.swd(real, descriptors(torch.rand(30, 3, 64, 64) * 2 - 1, 2))
    assert np.mean(others) < np.mean(blurred) < np.mean(noise)
    assert np.mean(swd.swd(real, real)) < 1e-6


def test_fid_features_are_2048_wide_and_a_set_is_at_distance_zero_from_itself(tmp_path):
    torch.manual_seed(0)
    network = load_inception(None, torch.device("cpu"))
    torch.save(network.state_dict(), tmp_path / "inception.pth")
    reloaded = load_inception(tmp_path / "inception.pth", torch.device("cpu"))
    images = faces(range(6))
    features = network.features(images)
    assert features.shape == (6, 2048)
    torch.testing.assert_close(reloaded.features(images), features)
    other = network.features(torch.rand(6, 3, 64, 64) * 2 - 1)
    # random weights shrink activations to ~1e-8, so distances are tiny; their ratio is what counts
    assert abs(frechet_distance(features, features)) < 1e-6 * frechet_distance(features, other)


@pytest.mark.parametrize("n,m,dims", [(30, 40, 20), (12, 9, 64)])      # more images than dims, and fewer
def test_frechet_distance_matches_the_matrix_square_root_formula(n, m, dims):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    generator = torch.Generator().manual_seed(n)
    a = torch.randn(n, dims, generator=generator, dtype=torch.float64)
    b = torch.randn(m, dims, generator=generator, dtype=torch.float64) * 1.3 + 0.2
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = np.real(scipy_linalg.sqrtm(cov_a @ cov_b))
    expected = ((a.mean(0) - b.mean(0)).square().sum().item() + np.trace(cov_a + cov_b - 2 * root))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_missing_inception_weights_are_refused_with_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained_networks"):
        load_inception(tmp_path / "nowhere.pth", torch.device("cpu"))

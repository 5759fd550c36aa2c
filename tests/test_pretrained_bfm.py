"""BFM09_model_info.mat is read with shape checks; a broken file is refused naming the key."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from nerffacespeech.pretrained.bfm import BFMError, load_bfm09

V, T = 40, 60      # the real file has V = 35709; the layout is the same


def official_layout(rng: np.random.Generator) -> dict:
    """The keys and orientations convert_bfm09_data.py saves (1-based indices, MATLAB style)."""
    return {
        "meanshape": rng.normal(size=(1, 3 * V)).astype(np.float32),
        "meantex": rng.uniform(0, 255, size=(1, 3 * V)).astype(np.float32),
        "idBase": rng.normal(size=(3 * V, 80)).astype(np.float32),
        "exBase": rng.normal(size=(3 * V, 64)).astype(np.float32),
        "texBase": rng.normal(size=(3 * V, 80)).astype(np.float32),
        "tri": rng.integers(1, V + 1, size=(T, 3)).astype(np.float64),
        "point_buf": rng.integers(1, T + 1, size=(V, 8)).astype(np.float64),
        "tri_mask2": rng.integers(1, V + 1, size=(T // 2, 3)).astype(np.float64),
        "keypoints": rng.integers(1, V + 1, size=(1, 68)).astype(np.float64),
        "frontmask2_idx": rng.integers(1, V + 1, size=(V // 2, 1)).astype(np.float64),
        "skinmask": (rng.uniform(size=(1, V)) > 0.5).astype(np.float64),
    }


@pytest.fixture
def layout():
    return official_layout(np.random.default_rng(0))


def test_loads_arrays_with_zero_based_indices(tmp_path, layout):
    scipy.io.savemat(tmp_path / "BFM09_model_info.mat", layout)
    bfm = load_bfm09(tmp_path / "BFM09_model_info.mat", vertices=V)
    assert bfm.num_vertices == V
    assert np.array_equal(bfm.mean_shape, layout["meanshape"].reshape(-1))
    assert bfm.exp_base.shape == (3 * V, 64) and bfm.exp_base.dtype == np.float32
    assert np.array_equal(bfm.triangles, layout["tri"].astype(np.int64) - 1)
    assert np.array_equal(bfm.keypoints, layout["keypoints"].reshape(-1).astype(np.int64) - 1)
    assert bfm.skin_mask.shape == (V,)


def test_the_default_expects_the_real_vertex_count(tmp_path, layout):
    scipy.io.savemat(tmp_path / "bfm.mat", layout)
    with pytest.raises(BFMError, match=r"meanshape has 120 values, expected 3 x 35709"):
        load_bfm09(tmp_path / "bfm.mat")


@pytest.mark.parametrize("key", ["exBase", "keypoints", "point_buf"])
def test_a_missing_key_is_named(tmp_path, layout, key):
    del layout[key]
    scipy.io.savemat(tmp_path / "bfm.mat", layout)
    with pytest.raises(BFMError, match=rf"missing key\(s\) \['{key}'\]"):
        load_bfm09(tmp_path / "bfm.mat", vertices=V)


def test_a_basis_of_the_wrong_width_is_named_with_its_shape(tmp_path, layout):
    layout["exBase"] = layout["exBase"][:, :32]
    scipy.io.savemat(tmp_path / "bfm.mat", layout)
    with pytest.raises(BFMError, match=r"exBase has shape \(120, 32\), expected \(120, 64\)"):
        load_bfm09(tmp_path / "bfm.mat", vertices=V)


def test_zero_based_triangles_are_refused(tmp_path, layout):
    layout["tri"] = layout["tri"] - 1          # someone saved Python indices
    layout["tri"][0, 0] = 0
    scipy.io.savemat(tmp_path / "bfm.mat", layout)
    with pytest.raises(BFMError, match=r"tri holds vertex indices outside 1\.\.40"):
        load_bfm09(tmp_path / "bfm.mat", vertices=V)


def test_a_file_that_is_not_a_mat_file_is_refused(tmp_path):
    (tmp_path / "bfm.mat").write_text("<html>not found</html>")
    with pytest.raises(BFMError, match="HTML"):
        load_bfm09(tmp_path / "bfm.mat", vertices=V)


def test_a_v73_hdf5_file_is_read_with_h5py(tmp_path, layout):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "bfm.mat", "w", userblock_size=512) as f:
        for key, value in layout.items():
            f[key] = np.asarray(value).T                  # MATLAB writes column-major
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
    with open(tmp_path / "bfm.mat", "r+b") as f:      # MATLAB's 128-byte header: text, subsys, version 2, IM
        f.write(text.ljust(116) + b" " * 8 + b"\x00\x02IM")
    bfm = load_bfm09(tmp_path / "bfm.mat", vertices=V)
    assert np.array_equal(bfm.id_base, layout["idBase"])

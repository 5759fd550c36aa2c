"""Camera paths: fixed, a gentle sway, and a driving clip's poses.json in the generator's convention."""
import json
import math

import numpy as np
import pytest

from nerffacespeech.generate import cameras
from nerffacespeech.preprocess.errors import BadInput


def test_fixed_and_gentle_paths():
    assert np.allclose(cameras.fixed(3, 0.1, -0.2), [[0.1, -0.2]] * 3)
    path = cameras.gentle(250, 0.0, 0.0, 0.12, 0.04, 5.0)
    assert path.shape == (250, 2) and np.allclose(path[0], 0)
    assert abs(path[:, 0]).max() <= 0.12 + 1e-6 and abs(path[:, 1]).max() <= 0.04 + 1e-6
    assert np.abs(np.diff(path, axis=0)).max() < 0.01          # gentle: under 0.6 degrees per frame


def test_poses_json_frontal_is_the_generators_zero_and_short_clips_ping_pong(tmp_path):
    frames = {f"anna/00001/{i:05d}": {"yaw": math.pi / 2 + 0.1 * i, "pitch": math.pi / 2 - 0.05 * i, "radius": 1.0}
              for i in range(1, 4)}
    frames["bob/00001/00001"] = {"yaw": 0.0, "pitch": 0.0, "radius": 1.0}
    path = tmp_path / "poses.json"
    path.write_text(json.dumps({"convention": "...", "frames": frames}))
    angles = cameras.from_poses_json(path, 6, "anna/00001")
    assert np.allclose(angles[:, 0], [0.1, 0.2, 0.3, 0.2, 0.1, 0.2], atol=1e-6)
    assert np.allclose(angles[:, 1], [0.05, 0.1, 0.15, 0.1, 0.05, 0.1], atol=1e-6)
    with pytest.raises(BadInput, match="poses_clip: .* has no clip 'carl/1'"):
        cameras.from_poses_json(path, 6, "carl/1")

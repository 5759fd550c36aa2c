"""The processed-data format's one owner: what preprocessing commits is what training reads back."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from nerffacespeech.data.processed import FORMAT_VERSION, ProcessedData, fingerprint
from nerffacespeech.preprocess import bfm

KEY = "someone/00001"


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _commit(data: ProcessedData) -> None:
    coeffs = np.tile(np.arange(257, dtype=np.float32), (3, 1))          # coefficient i holds i
    frame_index = np.array([2, 5, 9], np.int32)
    crops = {9: _png(90), 2: _png(20), 5: _png(50)}          # any order in, frame order out
    data.commit_clip(KEY, crops, {"frame_index": frame_index, "coeffs": coeffs,
                                  "poses": np.zeros((3, 3), np.float32)})


def test_a_committed_clip_reads_back_with_its_crops_in_frame_order_and_its_expressions(tmp_path):
    data = ProcessedData(tmp_path)
    _commit(data)
    clip = data.read_clip(KEY)
    assert clip.frame_index.tolist() == [2, 5, 9] and clip.fitted
    assert [int(image[0, 0, 0]) for image in clip.images()] == [20, 50, 90]
    deep3d_expressions = np.tile(np.arange(80, 144, dtype=np.float32), (3, 1))   # id 80 | exp 64 | ...
    assert np.array_equal(clip.expressions, deep3d_expressions)
    assert np.array_equal(bfm.split(torch.from_numpy(clip.arrays["coeffs"]))["exp"].numpy(), deep3d_expressions)
    assert not list(data.clip_dir(KEY).parent.glob(".*partial*"))


def test_an_outcome_counts_as_finished_only_for_the_same_settings_and_a_committed_clip(tmp_path):
    data = ProcessedData(tmp_path)
    settings = fingerprint({"resolution": 64})
    data.write_outcome(KEY, {"version": FORMAT_VERSION, "fingerprint": settings, "status": "done"})
    assert data.finished(KEY, settings) is None                      # outcome without its clip
    _commit(data)
    assert data.finished(KEY, settings)["status"] == "done"
    assert data.finished(KEY, fingerprint({"resolution": 128})) is None

"""face-alignment's weights are verified and linked where face-alignment's own lookup finds them."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from face_alignment.api import models_urls
from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls
from face_alignment.utils import load_file_from_url

from nerffacespeech.pretrained import face_alignment_weights, manifest

REAL = manifest.load()


@pytest.fixture
def weights(tmp_path):
    """Two small torch files under the official names, and a manifest whose prefixes match them."""
    root = tmp_path / "pretrained"
    files = {}
    for i, name in enumerate(face_alignment_weights.ENTRIES):
        path = root / REAL.get(name).path
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.full((4,), float(i))}, path)
        fields = {k: v for k, v in vars(REAL.get(name)).items() if k in ("path", "format", "licence", "manual")}
        fields.update(stages=["preprocess"], sha256_prefix=hashlib.sha256(path.read_bytes()).hexdigest()[:10])
        files[name] = fields
    (tmp_path / "MANIFEST.yaml").write_text(yaml.safe_dump({"files": files}))
    return root, manifest.load(tmp_path / "MANIFEST.yaml")


def test_the_manifest_uses_the_names_face_alignment_downloads():
    assert Path(REAL.get("s3fd").path).name == Path(sfd_urls["s3fd"]).name
    assert Path(REAL.get("fan_2d").path).name == Path(models_urls["2DFAN-4"]).name


@pytest.fixture
def hub_dir(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(tmp_path / "hub")
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_linked_weights_are_what_face_alignment_finds_offline(weights, hub_dir):
    root, m = weights
    face_alignment_weights.link_into_hub(root, manifest=m)            # into torch.hub.get_dir()
    found = load_file_from_url(models_urls["2DFAN-4"])              # face-alignment's own lookup
    assert Path(found).resolve() == (root / m.get("fan_2d").path).resolve()
    detector = torch.hub.load_state_dict_from_url(sfd_urls["s3fd"])  # how S3FD loads by default
    assert torch.equal(detector["w"], torch.zeros(4))


def test_a_corrupt_weight_file_is_refused_before_linking(weights, tmp_path):
    root, m = weights
    (root / m.get("s3fd").path).write_bytes(b"PK\x03\x04 corrupt")
    with pytest.raises(FileNotFoundError, match="wrong hash.*fetch s3fd"):
        face_alignment_weights.link_into_hub(root, tmp_path / "hub", m)
    assert not (tmp_path / "hub" / "checkpoints" / "s3fd-619a316812.pth").exists()

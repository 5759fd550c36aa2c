"""Face detection, 68-point landmarks and FFHQ alignment on real photos (astronaut, LFW)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from nerffacespeech.preprocess import align, landmarks
from nerffacespeech.preprocess.errors import BadInput


@pytest.fixture(scope="module")
def marker():
    return landmarks.DlibLandmarker()


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()


def _lfw(indices, size=128, pad=0.25):
    """LFW crops (25×25 grey) upscaled and padded so a detector sees some background."""
    faces = (skdata.lfw_subset()[indices] * 255).round().astype(np.uint8)
    p = int(pad * size)
    return [np.dstack([cv2.copyMakeBorder(cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC),
                                          p, p, p, p, cv2.BORDER_REPLICATE)] * 3) for f in faces]


def _one_or_none(faces, min_score):
    try:
        return landmarks.single_face(faces, min_score)
    except BadInput:
        return None


def _eyes(points):
    return np.stack([points[..., 36:42, :].mean(-2), points[..., 42:48, :].mean(-2)], axis=-2)


def _ffhq_reference_crop(image, points, resolution):
    """The FFHQ script's own crop: PIL's QUAD transform of the same quad (no pad, no blur)."""
    quad = align.ffhq_quads(points[None])[0]
    return np.asarray(Image.fromarray(image).transform(
        (resolution, resolution), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR))


def test_the_astronaut_has_exactly_one_face(marker, astronaut):
    faces = marker.detect([astronaut])[0]
    face = landmarks.single_face(faces, marker.min_score)
    assert face.landmarks.shape == (68, 2)
    assert 170 < face.landmarks[:, 0].mean() < 280 and 60 < face.landmarks[:, 1].mean() < 190


def test_aligned_astronaut_has_its_eyes_where_ffhq_alignment_puts_them(marker, astronaut):
    face = landmarks.single_face(marker.detect([astronaut])[0], marker.min_score)
    crops, transforms = align.align_faces([astronaut], face.landmarks[None], 256)
    reference = _ffhq_reference_crop(astronaut, face.landmarks, 256)
    ours = landmarks.single_face(marker.detect([crops[0]])[0], marker.min_score).landmarks
    theirs = landmarks.single_face(marker.detect([reference])[0], marker.min_score).landmarks
    assert np.abs(_eyes(ours) - _eyes(theirs)).max() < 3.0
    mapped = align.apply_transforms(_eyes(face.landmarks)[None], transforms)[0]
    assert np.abs(_eyes(ours) - mapped).max() < 3.0
    assert abs(mapped[0, 1] - mapped[1, 1]) < 2.0           # eyes about level (FFHQ also weighs the mouth)
    assert abs(mapped.mean(0)[0] - 128) < 2.0                # and about centred left-right


def test_most_lfw_faces_are_found_and_aligned_like_ffhq(marker):
    images = _lfw(slice(0, 100))
    found = [_one_or_none(f, marker.min_score) for f in marker.detect(images)]
    hits = [(im, f) for im, f in zip(images, found) if f is not None]
    assert len(hits) >= 85
    errors = []
    for image, face in hits[:12]:
        crops, _ = align.align_faces([image], face.landmarks[None], 256)
        reference = _ffhq_reference_crop(image, face.landmarks, 256)
        again = [marker.detect([c])[0] for c in (crops[0], reference)]
        if all(again):
            errors.append(np.abs(_eyes(again[0][0].landmarks) - _eyes(again[1][0].landmarks)).max())
    assert len(errors) >= 10 and np.median(errors) < 2.0 and max(errors) < 4.0


def test_lfw_non_faces_are_refused_as_no_face(marker):
    kinds = []
    for faces in marker.detect(_lfw(slice(100, 130))):
        try:
            landmarks.single_face(faces, marker.min_score)
            kinds.append("accepted")
        except BadInput as refused:
            kinds.append(refused.kind)
    assert kinds.count("no_face") >= 27


def test_two_people_side_by_side_are_refused_as_several_faces(marker):
    a, b = _lfw([3, 8])
    faces = marker.detect([np.hstack([a, b])])[0]
    with pytest.raises(BadInput) as caught:
        landmarks.single_face(faces, marker.min_score)
    assert caught.value.kind == "several_faces"


def test_smoothing_removes_jitter_but_keeps_slow_motion():
    rng = np.random.default_rng(0)
    t = np.arange(100)[:, None, None]
    slow = np.broadcast_to(10 * np.sin(t / 15.0), (100, 68, 2))
    noisy = slow + rng.normal(0, 1.0, slow.shape)
    smoothed = align.smooth_landmarks(noisy, sigma_frames=2.0)
    assert np.abs(smoothed - slow).std() < 0.5 * np.abs(noisy - slow).std()
    assert np.abs(smoothed - slow)[5:-5].mean() < 0.5


def test_fan_landmarker_is_built_offline_from_local_weight_files(tmp_path):
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models.fan import FAN

    torch.manual_seed(0)
    (tmp_path / "face_alignment").mkdir()
    detector, fan = s3fd(), FAN(4)
    torch.save(detector.state_dict(), tmp_path / landmarks.S3FD_FILE)
    torch.save(fan.state_dict(), tmp_path / landmarks.FAN_FILE)
    hub_before = torch.hub.get_dir()
    marker = landmarks.make_landmarker("auto", tmp_path)
    assert marker.name == "fan" and torch.hub.get_dir() == hub_before
    loaded = dict(marker._fa.face_alignment_net.named_parameters())
    for name, value in list(fan.named_parameters())[:3]:
        assert torch.equal(loaded[name], value)

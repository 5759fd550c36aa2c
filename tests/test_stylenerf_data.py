"""Training images: folders and zips of real faces, the resumable distributed order, mirroring."""
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from nerffacespeech.train.images import ImageDataset, PositionSampler, batches, list_images

FACES = Path(__file__).resolve().parents[1] / "data" / "sample" / "faces" / "lfw"


def first(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_images_are_found_in_folders_and_in_zips_inside_them_but_not_in_hidden_folders(tmp_path):
    faces = sorted(FACES.glob("*.png"))
    (tmp_path / "loose").mkdir()
    (tmp_path / "clip").mkdir()
    for path in faces[:5]:
        shutil.copy(path, tmp_path / "loose")
    with zipfile.ZipFile(tmp_path / "clip" / "frames.zip", "w") as archive:
        for path in faces[5:15]:
            archive.write(path, f"frames/{path.name}")
    (tmp_path / ".clip.tmp-123").mkdir()                    # a preprocessing clip not committed yet
    shutil.copy(faces[20], tmp_path / ".clip.tmp-123")
    refs = list_images(tmp_path)
    assert len(refs) == 15 and sum(r.member is not None for r in refs) == 10
    assert len(list_images(tmp_path / "clip" / "frames.zip")) == 10
    assert ImageDataset(tmp_path, 32)[(0, False)].shape == (3, 32, 32)    # the first zip member


def test_images_are_loaded_at_the_training_resolution_and_mirrored_on_request():
    data = ImageDataset(FACES, 32)
    image, mirrored = data[(3, False)], data[(3, True)]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(mirrored, image.flip(-1)) and not torch.equal(mirrored, image)


def test_ranks_see_disjoint_images_and_together_every_image_once_per_epoch():
    size, world, batch = 100, 2, 5
    seen = []
    for rank in range(world):
        sampler = iter(PositionSampler(size, rank, world, batch, seed=3, mirror=False))
        seen.append(first(sampler, size // world))
    assert not {i for i, _ in seen[0]} & {i for i, _ in seen[1]}
    assert sorted(i for s in seen for i, _ in s) == list(range(size))


def test_mirroring_doubles_the_epoch_with_each_image_once_each_way():
    items = first(iter(PositionSampler(10, 0, 1, 4, seed=0, mirror=True)), 20)
    assert sorted(items) == sorted([(i, f) for i in range(10) for f in (False, True)])


def test_a_sampler_started_at_a_step_continues_the_uninterrupted_order():
    whole = first(iter(PositionSampler(30, 1, 2, 4, seed=9, mirror=True)), 4 * 20)
    resumed = first(iter(PositionSampler(30, 1, 2, 4, seed=9, mirror=True, start_step=7)), 4 * 13)
    assert resumed == whole[4 * 7:]


def test_loader_workers_deliver_the_sampler_order_without_touching_the_global_generator():
    data = ImageDataset(FACES, 16)
    sampler = PositionSampler(len(data), 0, 1, 8, seed=1, mirror=True)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    inline = first(batches(data, sampler, workers=0, pin_memory=False), 3)
    assert torch.equal(torch.rand(1), expected)
    workers = first(batches(data, sampler, workers=2, pin_memory=False), 3)
    for a, b in zip(inline, workers):
        assert torch.equal(a, b)
    first_items = first(iter(sampler), 8)
    assert torch.equal(inline[0], torch.stack([data[item] for item in first_items]))
    assert np.unique(inline[0].numpy()).size > 50          # real pictures, not blank

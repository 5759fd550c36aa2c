"""Training images: a folder or zip of aligned images (StyleGAN layout, searched recursively,
zips inside folders included, so preprocessing's `clips/<person>/<clip>/frames.zip` works as is), a deterministic distributed order whose position is a single
number saved in checkpoints, x-flip augmentation, and a loader that keeps the device fed.

The order is a pure function of (seed, position): position p is image `perm_e[p % n]` of epoch
e = p // n, where perm_e is a seeded permutation of the n (or 2n with mirroring) items, and the
batch of rank r at step s covers positions [(s * world + r) * batch, ... + batch). So a resumed
run sees exactly the images an uninterrupted run would have seen.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives: a file, or a member of a zip archive."""

    path: str
    member: str | None = None


def list_images(root: str | Path) -> list[ImageRef]:
    """Every image under `root` (a folder or a .zip), in a stable sorted order."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".zip":
        return _zip_members(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image data {root} is neither a folder nor a .zip")
    refs: list[ImageRef] = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue                        # hidden: e.g. a preprocessing clip not committed yet
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            refs.append(ImageRef(str(path)))
        elif path.suffix.lower() == ".zip" and path.is_file():
            refs += _zip_members(path)
    return refs


def _zip_members(path: Path) -> list[ImageRef]:
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
    return [ImageRef(str(path), name) for name in names]


class ImageDataset(torch.utils.data.Dataset):
    """uint8 (3, R, R) images at `resolution`; item (i, flip) mirrors image i when flip is set."""

    def __init__(self, root: str | Path, resolution: int):
        self.refs = list_images(root)
        if not self.refs:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        self.resolution = resolution
        self._archives: dict[str, zipfile.ZipFile] = {}      # opened lazily per worker process

    def __len__(self) -> int:
        return len(self.refs)

    def _read_bytes(self, ref: ImageRef) -> bytes:
        if ref.member is None:
            return Path(ref.path).read_bytes()
        if ref.path not in self._archives:
            self._archives[ref.path] = zipfile.ZipFile(ref.path)
        return self._archives[ref.path].read(ref.member)

    def load(self, index: int) -> np.ndarray:
        """Image `index` as (R, R, 3) uint8, square-cropped at the centre and resized if needed."""
        from PIL import Image

        with Image.open(io.BytesIO(self._read_bytes(self.refs[index]))) as image:
            image = image.convert("RGB")
            w, h = image.size
            if w != h:
                side = min(w, h)
                image = image.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
            if image.size[0] != self.resolution:
                image = image.resize((self.resolution, self.resolution), Image.LANCZOS)
            return np.asarray(image, dtype=np.uint8)

    def __getitem__(self, item: tuple[int, bool]) -> torch.Tensor:
        index, flip = item
        array = self.load(index)
        if flip:
            array = array[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_archives"] = {}                 # zip handles are not shared across processes
        return state


class PositionSampler(torch.utils.data.Sampler):
    """Endless (index, flip) items of one rank, starting at global step `start_step`."""

    def __init__(self, size: int, rank: int, world_size: int, batch: int, seed: int, mirror: bool,
                 start_step: int = 0):
        self.size, self.rank, self.world, self.batch = size, rank, world_size, batch
        self.seed, self.mirror, self.start_step = seed, mirror, start_step

    @property
    def items(self) -> int:
        return self.size * (2 if self.mirror else 1)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.items)

    def item_at(self, position: int, cache: dict) -> tuple[int, bool]:
        epoch, offset = divmod(position, self.items)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = self.permutation(epoch)
        item = int(cache[epoch][offset])
        return item % self.size, item >= self.size

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        cache: dict = {}
        step = self.start_step
        while True:
            first = (step * self.world + self.rank) * self.batch
            for position in range(first, first + self.batch):
                yield self.item_at(position, cache)
            step += 1


def batches(dataset: ImageDataset, sampler: PositionSampler, workers: int, pin_memory: bool,
            worker_init: Callable[[int], None] | None = None) -> Iterator[torch.Tensor]:
    """uint8 batches (B, 3, R, R) in sampler order, loaded by `workers` processes ahead of use.

    `worker_init` runs first in each worker: the training task passes its stop request's
    `shield_child`, so a SIGTERM to every process of the job does not kill the workers.
    """
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=sampler.batch, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        worker_init_fn=worker_init,
        prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0))       # never draws from the global generator
    return iter(loader)


def to_training(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] on `device` (non-blocking from pinned memory)."""
    return batch.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)

"""face-alignment's S3FD and 2DFAN4 weights, verified, and placed where face-alignment looks.

face-alignment 1.5.0 downloads `s3fd-619a316812.pth` and `2DFAN4-11f355bf06.pth.tar` into
`torch.hub.get_dir()/checkpoints` when it is constructed, and uses the files already there under
those exact names; offline it has to find them there (or be given `path_to_detector`).
"""
from __future__ import annotations

import os
from pathlib import Path

from .manifest import Manifest, default_root, load
from .verify import read_pins, verify_file

ENTRIES = ("s3fd", "fan_2d")


def verified_paths(root: str | os.PathLike | None = None, manifest: Manifest | None = None) -> dict[str, Path]:
    """{entry name: path} of both files after checking them (digest prefix from the file names)."""
    manifest = manifest or load()
    root = Path(root) if root is not None else default_root(manifest.path)
    pins = read_pins(root)
    paths = {}
    for name in ENTRIES:
        entry = manifest.get(name)
        result = verify_file(entry, entry.location(root), pins.get(name))
        if not result.good:
            raise FileNotFoundError(f"{result.path}: {result.status.value}: {result.detail}; "
                                    f"run `python -m nerffacespeech.pretrained fetch {name}`")
        paths[name] = result.path
    return paths


def link_into_hub(root: str | os.PathLike | None = None, hub_dir: str | os.PathLike | None = None,
                  manifest: Manifest | None = None) -> list[Path]:
    """Symlink the verified files into `hub_dir/checkpoints` (default: torch.hub.get_dir()).

    Each link is made under a temporary name and renamed over the target, so concurrent ranks
    and interrupted runs never leave a half-made entry. Returns the links.
    """
    if hub_dir is None:
        import torch.hub

        hub_dir = torch.hub.get_dir()
    checkpoints = Path(hub_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    links = []
    for path in verified_paths(root, manifest).values():
        link = checkpoints / path.name
        tmp = checkpoints / f".{path.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(path.resolve(), tmp)
        os.replace(tmp, link)
        links.append(link)
    return links

"""The manifest of official pretrained files: where each lies, how to check it, where it comes from.

Torch-free: the launcher's validation and `python -m nerffacespeech.pretrained list` import it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = REPO_ROOT / "pretrained_networks" / "MANIFEST.yaml"
ROOT_ENV = "NFS_PRETRAINED_ROOT"

FORMATS = ("pickle", "safetensors", "torch", "mat", "any")
_HEX = re.compile(r"^[0-9a-f]+$")


class ManifestError(ValueError):
    """The manifest file is malformed."""


@dataclass(frozen=True)
class Source:
    """A download: `url`, and where the file is a member of an archive, that member's name."""

    url: str
    archive_member: str | None = None


@dataclass(frozen=True)
class Entry:
    """One pretrained file."""

    name: str
    path: str                      # relative to the pretrained root
    format: str                    # one of FORMATS: what `verify` sniffs in the header
    stages: tuple[str, ...]        # launcher stages that need it
    licence: str
    manual: str                    # how to get it by hand (shown when fetch cannot)
    sources: tuple[Source, ...] = ()
    size: int | None = None        # bytes, where known
    sha256: str | None = None      # full digest, where known
    sha256_prefix: str | None = None  # e.g. from torch.hub-style file names (s3fd-619a316812.pth)
    notes: str = ""

    def location(self, root: Path) -> Path:
        return Path(root) / self.path


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: tuple[Entry, ...]

    def get(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"{name!r} is not in {self.path} (known: {', '.join(self.names())})")

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def for_stage(self, stage: str) -> list[Entry]:
        return [entry for entry in self.entries if stage in entry.stages]


def default_root(manifest_path: Path | None = None) -> Path:
    """$NFS_PRETRAINED_ROOT, else the folder of the manifest: the one place that variable is read."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env)
    return Path(manifest_path or DEFAULT_MANIFEST).parent


def load(path: str | os.PathLike | None = None) -> Manifest:
    """Read and validate the manifest; errors name the entry and field."""
    path = Path(path or DEFAULT_MANIFEST)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ManifestError(f"{path}: expected a mapping with a 'files' mapping")
    entries = tuple(_entry(path, name, fields) for name, fields in data["files"].items())
    return Manifest(path, entries)


_REQUIRED = {"path": str, "format": str, "stages": list, "licence": str, "manual": str}
_OPTIONAL = {"sources": list, "size": int, "sha256": str, "sha256_prefix": str, "notes": str}


def _entry(path: Path, name: str, fields) -> Entry:
    where = f"{path}: files.{name}"
    if not isinstance(fields, dict):
        raise ManifestError(f"{where}: expected a mapping")
    unknown = set(fields) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {sorted(unknown)}")
    for key, kind in _REQUIRED.items():
        if not isinstance(fields.get(key), kind):
            raise ManifestError(f"{where}.{key}: required, a {kind.__name__}")
    for key, kind in _OPTIONAL.items():
        if fields.get(key) is not None and not isinstance(fields[key], kind):
            raise ManifestError(f"{where}.{key}: must be a {kind.__name__}")
    if fields["format"] not in FORMATS:
        raise ManifestError(f"{where}.format: {fields['format']!r} is not one of {FORMATS}")
    for key in ("sha256", "sha256_prefix"):
        value = fields.get(key)
        if value is not None and not _HEX.match(value):
            raise ManifestError(f"{where}.{key}: lower-case hex expected")
    if fields.get("sha256") and len(fields["sha256"]) != 64:
        raise ManifestError(f"{where}.sha256: 64 hex digits expected")
    if Path(fields["path"]).is_absolute() or ".." in Path(fields["path"]).parts:
        raise ManifestError(f"{where}.path: must be relative to the pretrained root")
    return Entry(
        name=name,
        path=fields["path"],
        format=fields["format"],
        stages=tuple(str(stage) for stage in fields["stages"]),
        licence=fields["licence"].strip(),
        manual=fields["manual"].strip(),
        sources=tuple(_source(where, item) for item in fields.get("sources") or ()),
        size=fields.get("size"),
        sha256=fields.get("sha256"),
        sha256_prefix=fields.get("sha256_prefix"),
        notes=(fields.get("notes") or "").strip(),
    )


def _source(where: str, item) -> Source:
    if isinstance(item, str):
        item = {"url": item}
    if not isinstance(item, dict) or not isinstance(item.get("url"), str) or set(item) - {"url", "archive_member"}:
        raise ManifestError(f"{where}.sources: each is a URL or {{url, archive_member}}")
    if not item["url"].startswith(("https://", "http://")):
        raise ManifestError(f"{where}.sources: {item['url']!r} is not an http(s) URL")
    return Source(item["url"], item.get("archive_member"))

"""The processed dataset (stage 1's output), written and read here only: preprocessing, merge,
audio2nerf and generation all go through `ProcessedData`.

    <out>/clips/<person>/<clip>/frames.zip   aligned crops, <frame>.png (1-based source frame number)
    <out>/clips/<person>/<clip>/clip.npz     mel, landmarks, transforms, coefficients, poses …
    <out>/outcomes/<person>/<clip>.json      done or skipped (with the reason); written last
    <out>/processed/shard-IIIII.jsonl        one line per item processed (appended after its outcome)
    <out>/shards/shard-IIIII-of-NNNNN.json   each shard's report
    <out>/metadata/{poses,expressions,landmarks}.json, <out>/manifest.json   written by merge

A clip folder is built under a hidden temporary name and renamed into place; its outcome file
is written after that, so an outcome always describes committed outputs, and a clip without
an outcome is redone from scratch on the next run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from launcher.atomic import fsync_dir, write_json

FORMAT_VERSION = 1
# clip.npz "coeffs": Deep3DFaceRecon's 257 BFM09 coefficients per frame, in this order.
COEFF_SLICES = {"id": slice(0, 80), "exp": slice(80, 144), "tex": slice(144, 224),
                "angles": slice(224, 227), "gamma": slice(227, 254), "trans": slice(254, 257)}


def fingerprint(settings: dict) -> str:
    """Short digest of the settings that shape an item's outputs (a change means: redo it)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def expressions(coeffs: np.ndarray) -> np.ndarray:
    """The 64 expression coefficients of (..., 257) fitted coefficients."""
    return coeffs[..., COEFF_SLICES["exp"]]


def read_metadata_frames(path: Path) -> dict:
    """The per-frame entries (`<person>/<clip>/<frame>` → value) of a metadata/*.json file."""
    return json.loads(Path(path).read_text())["frames"]


@dataclass(frozen=True)
class ProcessedClip:
    """One committed clip: its clip.npz arrays, and its aligned crops on demand."""

    key: str
    folder: Path
    arrays: Mapping[str, np.ndarray]

    @property
    def frame_index(self) -> np.ndarray:
        """(K,) the kept frames' 1-based source frame numbers."""
        return self.arrays["frame_index"]

    @property
    def fitted(self) -> bool:
        """Whether the 3DMM fit ran (coefficients and camera poses are present)."""
        return "coeffs" in self.arrays and "poses" in self.arrays

    @property
    def expressions(self) -> np.ndarray:
        """(K, 64) fitted expression coefficients."""
        return expressions(self.arrays["coeffs"])

    def images(self) -> np.ndarray:
        """(K, H, W, 3) uint8 aligned crops, in frame_index order."""
        from PIL import Image

        with zipfile.ZipFile(self.folder / "frames.zip") as zf:
            names = {int(n.split(".")[0]): n for n in zf.namelist()}
            return np.stack([np.asarray(Image.open(io.BytesIO(zf.read(names[int(f)]))).convert("RGB"))
                             for f in self.frame_index])


@dataclass(frozen=True)
class ProcessedData:
    """A processed dataset folder: where each part lives, and how it is committed."""

    root: Path

    def clip_dir(self, key: str) -> Path:
        return self.root / "clips" / key

    def outcome_path(self, key: str) -> Path:
        return self.root / "outcomes" / f"{key}.json"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    # -- per item, written by the preprocess shards ------------------------------------------
    def read_outcome(self, key: str) -> dict | None:
        try:
            return json.loads(self.outcome_path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def finished(self, key: str, settings_fingerprint: str) -> dict | None:
        """The outcome of an item already finished with the same settings, else None."""
        outcome = self.read_outcome(key)
        if not outcome or outcome.get("version") != FORMAT_VERSION \
                or outcome.get("fingerprint") != settings_fingerprint:
            return None
        if outcome["status"] == "done" and not (self.clip_dir(key) / "clip.npz").is_file():
            return None
        return outcome

    def write_outcome(self, key: str, outcome: dict) -> None:
        write_json(self.outcome_path(key), outcome)

    def log_processed(self, shard: int, record: dict) -> None:
        """Append one line per processed item to the shard's log: how often each item ran, across attempts."""
        path = self.root / "processed" / f"shard-{shard:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record, sort_keys=True) + "\n")
            log.flush()
            os.fsync(log.fileno())

    def read_processed(self) -> list[dict]:
        """Every line of every shard's processed log."""
        return [json.loads(line) for path in sorted((self.root / "processed").glob("shard-*.jsonl"))
                for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_shard_report(self, shard: int, shard_count: int, report: dict) -> None:
        write_json(self.root / "shards" / f"shard-{shard:05d}-of-{shard_count:05d}.json", report)

    def commit_clip(self, key: str, crops: dict[int, bytes], arrays: dict[str, np.ndarray]) -> None:
        """Write frames.zip and clip.npz into a temporary folder, fsync, then rename it into place."""
        final = self.clip_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.parent / f".{final.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        with zipfile.ZipFile(partial / "frames.zip", "w", compression=zipfile.ZIP_STORED) as zf:
            for frame, data in sorted(crops.items()):
                info = zipfile.ZipInfo(f"{frame:05d}.{_suffix(data)}", date_time=(1980, 1, 1, 0, 0, 0))
                zf.writestr(info, data)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        (partial / "clip.npz").write_bytes(buffer.getvalue())
        for name in ("frames.zip", "clip.npz"):
            with open(partial / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(partial)
        if final.exists():                    # left by a run killed before it wrote the outcome
            shutil.rmtree(final)
        os.replace(partial, final)
        fsync_dir(final.parent)

    def remove_partials(self, key: str) -> None:
        """Drop temporary folders of this clip that a killed run left (only its shard touches them)."""
        final = self.clip_dir(key)
        for partial in final.parent.glob(f".{final.name}.partial-*"):
            shutil.rmtree(partial, ignore_errors=True)

    # -- the merged dataset, as training and generation read it -------------------------------
    def read_clip(self, key: str) -> ProcessedClip:
        with np.load(self.clip_dir(key) / "clip.npz") as z:
            arrays = {name: z[name] for name in z.files}
        return ProcessedClip(key, self.clip_dir(key), arrays)

    def write_metadata(self, name: str, convention: str, frames: dict) -> None:
        write_json(self.root / "metadata" / f"{name}.json", {"convention": convention, "frames": frames})

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.manifest_path, manifest)

    def read_manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def done_keys(self) -> list[str]:
        """The merged dataset's clips that were processed (not skipped), in manifest order."""
        return [c["key"] for c in self.read_manifest()["clips"] if c["status"] == "done"]

    def face_model(self, keys: list[str]) -> str:
        """The one morphable model these clips were fitted with (ValueError if they differ)."""
        models = {json.loads(self.outcome_path(k).read_text()).get("face_model") for k in keys}
        if len(models) != 1:
            raise ValueError(f"{self.root}: clips fitted with different face models {sorted(map(str, models))}")
        return models.pop()


def _suffix(data: bytes) -> str:
    return "png" if data[:4] == b"\x89PNG" else "jpg"

"""Where a processed clip lives and how it is committed: all of it at once, or none of it.

    <out>/clips/<person>/<clip>/frames.zip   aligned crops, <frame>.png (1-based source frame number)
    <out>/clips/<person>/<clip>/clip.npz     mel, landmarks, transforms, coefficients, poses …
    <out>/outcomes/<person>/<clip>.json      done or skipped (with the reason); written last
    <out>/processed/shard-IIIII.jsonl        one line per item processed (appended after its outcome)

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
from pathlib import Path

import numpy as np

from launcher.atomic import fsync_dir, write_json

FORMAT_VERSION = 1


def fingerprint(settings: dict) -> str:
    """Short digest of the settings that shape an item's outputs (a change means: redo it)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def clip_dir(out: Path, key: str) -> Path:
    return out / "clips" / key


def outcome_path(out: Path, key: str) -> Path:
    return out / "outcomes" / f"{key}.json"


def read_outcome(out: Path, key: str) -> dict | None:
    try:
        return json.loads(outcome_path(out, key).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def finished(out: Path, key: str, print_: str) -> dict | None:
    """The outcome of an item already finished with the same settings, else None."""
    outcome = read_outcome(out, key)
    if not outcome or outcome.get("version") != FORMAT_VERSION or outcome.get("fingerprint") != print_:
        return None
    if outcome["status"] == "done" and not (clip_dir(out, key) / "clip.npz").is_file():
        return None
    return outcome


def write_outcome(out: Path, key: str, outcome: dict) -> None:
    write_json(outcome_path(out, key), outcome)


def log_processed(out: Path, shard: int, record: dict) -> None:
    """Append one line per processed item to the shard's log: how often each item ran, across attempts."""
    path = out / "processed" / f"shard-{shard:05d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record, sort_keys=True) + "\n")
        log.flush()
        os.fsync(log.fileno())


def read_processed(out: Path) -> list[dict]:
    """Every line of every shard's processed log."""
    return [json.loads(line) for path in sorted((out / "processed").glob("shard-*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def commit_clip(out: Path, key: str, crops: dict[int, bytes], arrays: dict[str, np.ndarray]) -> None:
    """Write frames.zip and clip.npz into a temporary folder, fsync, then rename it into place."""
    final = clip_dir(out, key)
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


def remove_partials(out: Path, key: str) -> None:
    """Drop temporary folders of this clip that a killed run left (only its shard touches them)."""
    final = clip_dir(out, key)
    for partial in final.parent.glob(f".{final.name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)


def _suffix(data: bytes) -> str:
    return "png" if data[:4] == b"\x89PNG" else "jpg"

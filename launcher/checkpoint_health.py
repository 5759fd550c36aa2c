"""What the checkpoint manager set aside, and the operator's fresh-start permission, on disk and
without torch (for `status`, the supervisors and the runtime alike).

- Rank 0 writes `quarantine/<folder>/QUARANTINED.json` = {name, step, reason, time} into every
  checkpoint folder it moves out of the way (`name`: the folder's original name; `step`: its
  step, or null; `reason`: why, in a few words; `time`: unix time). `quarantined()` reads them
  back, oldest first.
- `FRESH_START` in a checkpoint folder lets a stage whose committed checkpoints are all unusable
  start over from step 0; without it the runtime refuses. The first commit removes it.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from .atomic import write_json

MANIFEST = "manifest.json"      # in every committed step folder: world size, files, digests
LATEST = "latest"               # names the newest committed step folder
QUARANTINE = "quarantine"
RECORD = "QUARANTINED.json"
FRESH_START = "FRESH_START"
NO_RECORD = "no record kept (quarantined by an older version, or the record could not be written)"
_COMMITTED = re.compile(r"^step-(\d+)$")
_ANY_STEP = re.compile(r"^\.?step-(\d+)")
_QUARANTINE_SUFFIX = re.compile(r"-[0-9a-f]{8}$")


def step_of(name: str) -> int | None:
    """The step a checkpoint folder's name carries (`step-000123`, `.step-000123.tmp-…`), or None."""
    match = _ANY_STEP.match(name)
    return int(match.group(1)) if match else None


def was_committed(record: dict) -> bool:
    """Was the quarantined folder a committed checkpoint (not an unfinished save)?"""
    return bool(_COMMITTED.match(record.get("name", "")))


def write_record(folder: Path, name: str, reason: str) -> None:
    """Record in `folder` why it is being quarantined (atomically), before it is moved."""
    write_json(Path(folder) / RECORD, {"name": name, "step": step_of(name), "reason": reason, "time": time.time()})


def quarantined(checkpoint_dir: Path) -> list[dict]:
    """The quarantine records under `checkpoint_dir`, oldest first ([] when there are none).

    Each also carries `folder`, its folder's name under `quarantine/`. A quarantined folder
    without a readable record gets one made up from its name and modification time.
    """
    root = Path(checkpoint_dir) / QUARANTINE
    if not root.is_dir():
        return []
    records = [_read_record(folder) for folder in root.iterdir() if folder.is_dir()]
    return sorted(records, key=lambda r: (r.get("time") or 0, r["folder"]))


def _read_record(folder: Path) -> dict:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        name = _QUARANTINE_SUFFIX.sub("", folder.name)
        name = name if _COMMITTED.match(name) else f".{name}"
        record = {"name": name, "step": step_of(name), "reason": NO_RECORD, "time": _mtime(folder)}
    return {**record, "folder": folder.name}


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None

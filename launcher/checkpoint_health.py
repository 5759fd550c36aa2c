"""What the checkpoint manager set aside, read without torch (for `status` and the supervisors).

Rank 0 leaves `quarantine/<folder>/QUARANTINED.json` = {name, step, reason, time} beside every
checkpoint folder it moved out of the way; this reads them back, oldest first.
"""
from __future__ import annotations

import json
from pathlib import Path

RECORD = "QUARANTINED.json"


def quarantined(checkpoint_dir: Path) -> list[dict]:
    """The quarantine records under `checkpoint_dir`, oldest first ([] when there are none)."""
    records = []
    for path in Path(checkpoint_dir).glob(f"quarantine/*/{RECORD}"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(records, key=lambda r: r.get("time", 0))

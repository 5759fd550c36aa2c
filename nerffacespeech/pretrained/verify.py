"""Check pretrained files against the manifest (presence, size, format, sha256) and pin unknown hashes.

Pickles are also read with the restricted reader (`safe_pickle.check`: nothing imported or run,
no tensor built, allocations bounded by the file's size), so a pickle that would call code or
demand memory beyond its size is `unsafe`, whether or not a digest is known.

Pins live in `<root>/pins.json` beside the files, because they describe the user's copy: the
digest of each file that passed verification, with the size and mtime it had (for a pickle, also
that the reader accepted it), so that a later verification of an unchanged file need not re-read
gigabytes. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from launcher import atomic

from . import formats, safe_pickle
from .manifest import Entry, Manifest, default_root, load

PINS_FILE = "pins.json"
READ_SAFELY = "read_safely"        # a pin's mark that the restricted reader accepted the pickle
_CHUNK = 8 * 2**20


class Status(str, Enum):
    OK = "ok"
    UNPINNED = "unpinned"          # present and well-formed, no digest known yet to compare
    MISSING = "missing"
    TRUNCATED = "truncated"
    WRONG_SIZE = "wrong size"
    BAD_FORMAT = "bad format"
    WRONG_HASH = "wrong hash"
    UNSAFE = "unsafe"              # a pickle the restricted reader refuses: code it would run, memory beyond its size


GOOD = (Status.OK, Status.UNPINNED)


@dataclass(frozen=True)
class Result:
    entry: Entry
    status: Status
    path: Path
    size: int | None = None
    sha256: str | None = None      # actual digest, where computed or trusted from an unchanged pin
    checked_against: str = ""      # "manifest", "pin", "prefix" or ""
    detail: str = ""

    @property
    def good(self) -> bool:
        return self.status in GOOD


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_pins(root: Path) -> dict:
    try:
        data = json.loads((Path(root) / PINS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{Path(root) / PINS_FILE}: unreadable ({exc}); delete it and re-run verify --pin")
    return data.get("files", {}) if isinstance(data, dict) else {}


def verify_file(entry: Entry, path: Path, pin: dict | None = None, *, full: bool = False) -> Result:
    """Check one file. `pin` is its record from pins.json; `full` re-reads even if unchanged.

    Size, then the header, then the digest where one is known, then (for a pickle not trusted
    from its pin) the restricted reader.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return Result(entry, Status.MISSING, path, detail="not found")
    pin = pin or {}
    expected_size = entry.size if entry.size is not None else pin.get("size")
    if expected_size is not None and stat.st_size != expected_size:
        status = Status.TRUNCATED if stat.st_size < expected_size else Status.WRONG_SIZE
        return Result(entry, status, path, stat.st_size,
                      detail=f"{stat.st_size} bytes, expected {expected_size}")
    bad = formats.problem(path, entry.format)
    if bad:
        return Result(entry, Status.BAD_FORMAT, path, stat.st_size, detail=bad)

    trusted = None if full else _trusted_digest(entry, pin, stat)
    expected, against = (entry.sha256, "manifest") if entry.sha256 else (pin.get("sha256"), "pin")
    if expected is None and entry.sha256_prefix is None:
        actual, against = None, ""
    else:
        actual = trusted or sha256_of(path)
        if expected is None:
            expected, against = entry.sha256_prefix, "prefix"
        if not actual.startswith(expected):
            return Result(entry, Status.WRONG_HASH, path, stat.st_size, actual, against,
                          f"sha256 {actual[:16]}…, expected {expected[:16]}… ({against})")
    refused = _refused_pickle(path) if entry.format == "pickle" and trusted is None else None
    if refused:
        return Result(entry, refused[0], path, stat.st_size, actual, against, refused[1])
    if actual is None:
        return Result(entry, Status.UNPINNED, path, stat.st_size, detail="no digest known: run verify --pin")
    return Result(entry, Status.OK, path, stat.st_size, actual, against)


def _trusted_digest(entry: Entry, pin: dict, stat: os.stat_result) -> str | None:
    """The pinned digest of a file unchanged since pinned (same size and mtime), else None.

    A pickle's pin counts only if it records that the restricted reader accepted the file; pins
    written before pickles were read lack that mark, so their files are read until re-pinned.
    """
    unchanged = pin.get("size") == stat.st_size and pin.get("mtime_ns") == stat.st_mtime_ns
    if not unchanged or (entry.format == "pickle" and not pin.get(READ_SAFELY)):
        return None
    return pin.get("sha256")


def _refused_pickle(path: Path) -> tuple[Status, str] | None:
    """(unsafe or bad format, why) if the restricted reader refuses the pickle at `path`, else None."""
    try:
        safe_pickle.check(path)
    except safe_pickle.UnsafePickleError as exc:
        return Status.UNSAFE, str(exc)
    except pickle.UnpicklingError as exc:
        return Status.BAD_FORMAT, str(exc)
    return None


def verify(manifest: Manifest, root: Path, names: list[str] | None = None, *, full: bool = False) -> list[Result]:
    root = Path(root)
    pins = read_pins(root)
    entries = [manifest.get(name) for name in names] if names else list(manifest.entries)
    return [verify_file(e, e.location(root), pins.get(e.name), full=full) for e in entries]


def pin(results: list[Result], root: Path) -> list[str]:
    """Record digests of the good files in pins.json (atomically); return the names pinned."""
    root = Path(root)
    pins = read_pins(root)
    pinned = []
    for result in results:
        if not result.good:
            continue
        stat = result.path.stat()
        digest = result.sha256 or sha256_of(result.path)
        pins[result.entry.name] = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                   "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if result.entry.format == "pickle":
            pins[result.entry.name][READ_SAFELY] = True      # a good pickle was read (or trusted as read)
        pinned.append(result.entry.name)
    if pinned:
        atomic.write_json(root / PINS_FILE, {"version": 1, "files": pins})
    return pinned


def verify_for_stage(stage_name: str, root: str | os.PathLike | None = None,
                     fields: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """[(field, message)] for every file `stage_name` needs that is not good; [] when all are.

    `fields` maps the entries a stage's config actually needs to the config field each problem
    is reported under (the stage's other entries are optional for that config); by default every
    entry the manifest lists for the stage, under `pretrained.<name>`. Each message names the
    file and how to get it. Torch-free and fast for pinned, unchanged files: meant for the
    launcher's validation (through the task checks of `nerffacespeech.configs`).
    """
    try:
        manifest = load()
        root = Path(root) if root is not None else default_root(manifest.path)
        entries = [e for e in manifest.for_stage(stage_name) if fields is None or e.name in fields]
        results = verify(manifest, root, [e.name for e in entries]) if entries else []
    except ValueError as exc:
        return [("pretrained", str(exc))]
    return [((fields or {}).get(r.entry.name, f"pretrained.{r.entry.name}"),
             f"{r.path}: {r.status.value}: {r.detail}; get it with "
             + (f"`python -m nerffacespeech.pretrained fetch {r.entry.name}`" if r.entry.sources
                else " ".join(r.entry.manual.split()))
             + " (docs/PRETRAINED.md)")
            for r in results if not r.good]


def format_table(results: list[Result]) -> str:
    rows = [("name", "status", "size", "sha256", "checked", "detail")]
    for r in results:
        rows.append((r.entry.name, r.status.value, "" if r.size is None else str(r.size),
                     (r.sha256 or "")[:16], r.checked_against, r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
                     for row in rows)

"""The files and folders a task config names, checked before submitting (no torch): each check
returns `(field, message)` problems, none for a path left unset (then the task reads what an
earlier stage of the same run writes, which need not exist yet)."""
from __future__ import annotations

import os

RELATIVE = "relative paths are taken from the directory you run the launcher in"
Problem = tuple[str, str]


def need_file(field: str, path: str | None, what: str) -> list[Problem]:
    """`path`, when set, must be a file."""
    if path is None or os.path.isfile(path):
        return []
    found = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
    return [(field, f"{path!r} {found} ({what}; {RELATIVE})")]


def need_folder(field: str, path: str | None, what: str) -> list[Problem]:
    """`path`, when set, must be a folder."""
    if path is None or os.path.isdir(path):
        return []
    found = "is a file, not a folder" if os.path.exists(path) else "does not exist"
    return [(field, f"{path!r} {found} ({what}; {RELATIVE})")]


def need_folder_or_zip(field: str, path: str | None, what: str) -> list[Problem]:
    """`path`, when set, must be a folder or a .zip file (image datasets)."""
    if path is None or os.path.isdir(path) or (os.path.isfile(path) and path.lower().endswith(".zip")):
        return []
    found = "is neither a folder nor a .zip" if os.path.exists(path) else "does not exist"
    return [(field, f"{path!r} {found} ({what}; {RELATIVE})")]


def need_existing(field: str, path: str | None, what: str) -> list[Problem]:
    """`path`, when set, must exist, file or folder (checkpoints: a step folder, `latest`, a file)."""
    if path is None or os.path.exists(path):
        return []
    return [(field, f"{path!r} does not exist ({what}; {RELATIVE})")]

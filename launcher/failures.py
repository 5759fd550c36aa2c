"""A failed rank's exception in a few words (type, message, and the file and line that raised
it), written into the rank's outcome record and shown where the user looks: the supervisor's
line, `status`'s reason column and the report. No torch: the CLI reads it."""
from __future__ import annotations

import traceback

MAX_MESSAGE = 2000


def summarize(exc: BaseException) -> dict:
    """`{"error": "Type: message", "where": "file:line in function"}` for the outcome record;
    `where` is the innermost frame, the one that raised."""
    summary = {"error": f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE]}
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        summary["where"] = f"{last.filename}:{last.lineno} in {last.name}"
    return summary


def lines(record: dict) -> list[str]:
    """The exception under the stage line: where it was raised, then its type and message."""
    if not record.get("error"):
        return []
    where = [f"  at {record['where']}"] if record.get("where") else []
    return where + [f"  {record['error']}"]


def one_line(record: dict) -> str:
    """The exception in one line, for a table cell: "Type: message (file.py:line in function)",
    the file without its folder (the supervisor's lines and the ledger keep the whole path)."""
    if not record.get("error"):
        return ""
    where = f" ({record['where'].rsplit('/', 1)[-1]})" if record.get("where") else ""
    return record["error"].replace("\n", " ") + where

"""The one exception preprocessing raises for bad input, so a shard can record it and go on."""
from __future__ import annotations


class BadInput(Exception):
    """An input that cannot be used; `kind` is a stable short code, `detail` says why in words."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

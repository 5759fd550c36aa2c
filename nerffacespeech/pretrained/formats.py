"""Cheap header checks that tell a real weight file from an HTML error page or a truncated copy.

Reads at most the first few KiB (the whole JSON header for safetensors); torch-free.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

# torch.save's legacy format: pickle protocol 2, then the magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_ZIP = b"PK\x03\x04"
_HDF5 = b"\x89HDF\r\n\x1a\n"
_MAX_SAFETENSORS_HEADER = 100 * 2**20


def problem(path: Path, fmt: str) -> str | None:
    """None when `path` looks like a file of format `fmt`, else what is wrong with it."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        return "empty file"
    if head.lstrip()[:1] == b"<":
        return "looks like an HTML/XML page, not weights (a failed or login-walled download?)"
    return _CHECKS[fmt](path, head)


def _pickle(path: Path, head: bytes) -> str | None:
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return None
    return "not a pickle (no protocol 2-5 header)"


def _torch(path: Path, head: bytes) -> str | None:
    if head.startswith((_ZIP, _TORCH_LEGACY_MAGIC)) or head[257:262] == b"ustar":
        return None
    return "not a torch.save file (neither zip, legacy magic nor tar)"


def _mat(path: Path, head: bytes) -> str | None:
    if not head.startswith(b"MATLAB"):
        return "not a MATLAB .mat file (no 'MATLAB' header text)"
    if b"7.3" in head[:20] and head[512:520] != _HDF5:
        return "MATLAB v7.3 header without the HDF5 signature at byte 512"
    return None


def _safetensors(path: Path, head: bytes) -> str | None:
    size = path.stat().st_size
    if size < 8:
        return "shorter than a safetensors header"
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > min(_MAX_SAFETENSORS_HEADER, size - 8):
        return f"safetensors header length {header_len} does not fit a {size}-byte file"
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "safetensors header is not JSON"
    ends = [info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"]
    expected = 8 + header_len + max(ends, default=0)
    if expected != size:
        return f"safetensors data should end at byte {expected}, file has {size} (truncated?)"
    return None


_CHECKS = {
    "pickle": _pickle,
    "torch": _torch,
    "mat": _mat,
    "safetensors": _safetensors,
    "any": lambda path, head: None,
}

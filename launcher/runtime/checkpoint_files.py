"""Checkpoint files written out of the trainer's way: hashed as they are written, durable when closed.

An async save's writer thread shares the interpreter with the training loop, so it must hold
the GIL as little as possible: every byte goes through `os.write` and `hashlib.update` on large
pieces (both release the GIL while they work), and the sha256 the manifest needs is taken from
the bytes in memory as they are written, so the commit does not read the files back (that
re-read used to run on the trainer's thread). Weights are serialised to safetensors here rather
than by the safetensors package, whose writer builds the file while holding the GIL.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

_PIECE = 32 << 20          # bytes per os.write / hash update: few GIL hand-offs, bounded latency
_SMALL = 1 << 16           # writes below this are gathered (torch.save emits many tiny headers)

_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


@dataclass(frozen=True)
class Written:
    """A file a writer wrote, hashed as it was written and fsynced: the commit need not read it."""
    name: str
    size: int
    sha256: str

    def entry(self) -> dict:
        """The file's manifest entry."""
        return {"size": self.size, "sha256": self.sha256}


class HashedFile:
    """A new file, written in large pieces and hashed on the way; `finish` makes it durable.

    A file-like object (`write`) for torch.save; used as a context manager, it closes the file
    descriptor if writing fails.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._digest = hashlib.sha256()
        self._small = bytearray()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) < _SMALL:
            self._small += view
            if len(self._small) >= _SMALL:
                self._flush_small()
        else:
            self._flush_small()
            for start in range(0, len(view), _PIECE):
                self._write_through(view[start:start + _PIECE])
        return len(view)

    def flush(self) -> None:
        """Nothing to do: pieces go to the kernel at once (small ones by `finish` at the latest)."""

    def _flush_small(self) -> None:
        if self._small:
            self._write_through(memoryview(self._small))
            self._small = bytearray()

    def _write_through(self, piece: memoryview) -> None:
        self._digest.update(piece)
        self.size += len(piece)
        while piece:
            piece = piece[os.write(self._fd, piece):]

    def finish(self) -> Written:
        """Write what is gathered, fsync, close; the file's name, size and sha256."""
        self._flush_small()
        os.fsync(self._fd)
        self._close()
        return Written(self.path.name, self.size, self._digest.hexdigest())

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> "HashedFile":
        return self

    def __exit__(self, *exc) -> None:
        self._close()


def torch_save(state: Any, path: Path) -> Written:
    """torch.save `state` into a new file at `path`, hashed as written and durable."""
    with HashedFile(path) as file:
        torch.save(state, file)
        return file.finish()


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path) -> Written:
    """Write contiguous CPU `tensors` as a safetensors file (loadable by `safetensors.torch.load_file`):
    an 8-byte little-endian header length, the JSON header padded to 8 bytes, the tensors' bytes."""
    names = sorted(tensors)
    header, offset = {}, 0
    for name in names:
        tensor = tensors[name]
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: safetensors has no dtype {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with HashedFile(path) as file:
        file.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            file.write(_raw_bytes(tensors[name]))
        return file.finish()


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("safetensors needs contiguous CPU tensors")
    return memoryview(tensor.detach().reshape(-1).view(torch.uint8).numpy())

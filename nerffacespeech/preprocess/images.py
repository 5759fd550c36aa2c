"""Read one frame as 8-bit RGB, refusing what alignment cannot use, with the reason."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadInput

MAX_PIXELS = 64_000_000          # refuse decompression bombs instead of trying them
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_frame(path: Path, min_size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB; raises BadInput for unreadable, truncated, non-RGB or small images."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise BadInput("image_unreadable", f"{path.name} is missing or empty")
    _refuse_deep_png(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise BadInput("image_too_large", f"{path.name} is {im.width}×{im.height}")
                mode = im.mode
                im.load()
                _refuse_mode(path, mode)
                rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInput("image_unreadable", f"{path.name} is not an image: {exc}") from None
    except OSError as exc:
        kind = "image_truncated" if "truncated" in str(exc) or "broken data" in str(exc) else "image_unreadable"
        raise BadInput(kind, f"{path.name}: {exc}") from None
    if min(rgb.shape[:2]) < min_size:
        raise BadInput("image_too_small",
                       f"{path.name} is {rgb.shape[1]}×{rgb.shape[0]}; at least {min_size} px a side needed")
    return rgb


def _refuse_mode(path: Path, mode: str) -> None:
    if mode in ("L", "LA", "1", "La"):
        raise BadInput("image_grayscale", f"{path.name} is grayscale ({mode}); RGB expected")
    if mode == "CMYK":
        raise BadInput("image_cmyk", f"{path.name} is CMYK; convert it to RGB with its colour profile")
    if mode.startswith("I") or mode == "F":
        raise BadInput("image_16bit", f"{path.name} has {mode} samples; 8-bit RGB expected")
    if mode not in ("RGB", "RGBA", "P", "YCbCr", "RGBX"):
        raise BadInput("image_mode", f"{path.name} has unsupported mode {mode}")


def _refuse_deep_png(path: Path) -> None:
    """PIL silently reduces 16-bit RGB PNGs to 8 bits; read the bit depth from the header instead."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == _PNG_SIGNATURE and len(head) == 26 and head[24] == 16:
        raise BadInput("image_16bit", f"{path.name} is a 16-bit PNG; 8-bit RGB expected")

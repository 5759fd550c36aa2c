"""Which rasterizer the photometric fit uses: `renderer: auto | nvdiffrast | torch`.

`auto` takes nvdiffrast on a CUDA device where it imports and works, else the pure-PyTorch one;
on a CUDA device that fallback is a warning (the fit is then much slower), never an error.
Asking for `nvdiffrast` where it cannot run is an error that says why.
"""
from __future__ import annotations

import warnings

import torch

from .render import TorchRasterizer


class RendererUnavailable(RuntimeError):
    """nvdiffrast was asked for where it cannot run."""


def choose(name: str, device: torch.device | str):
    """The rasterizer `name` stands for on `device` (see the module docstring)."""
    if name == "torch":
        return TorchRasterizer()
    if name == "nvdiffrast":
        return nvdiffrast(device)
    if name != "auto":
        raise ValueError(f"unknown renderer {name!r} (auto, nvdiffrast, torch)")
    if torch.device(device).type != "cuda":
        return TorchRasterizer()
    try:
        return nvdiffrast(device)
    except RendererUnavailable as why:
        warnings.warn(f"renderer auto: {why}; the photometric fit uses the pure-PyTorch rasterizer "
                      f"(correct, much slower)", RuntimeWarning, stacklevel=2)
        return TorchRasterizer()


def nvdiffrast(device: torch.device | str):
    """nvdiffrast's rasterizer on `device`, or RendererUnavailable saying why not."""
    if torch.device(device).type != "cuda":
        raise RendererUnavailable(f"nvdiffrast needs a CUDA device, got {device}")
    try:
        from .render_nvdiffrast import NvdiffrastRasterizer

        return NvdiffrastRasterizer(device)
    except ImportError as error:
        raise RendererUnavailable(f"nvdiffrast does not import ({error}); see docs/PREPROCESSING.md, "
                                  f"'nvdiffrast'") from error
    except RuntimeError as error:       # built for another CUDA or GPU architecture
        raise RendererUnavailable(f"nvdiffrast does not run here ({error})") from error

"""Capture and restore the random generators a training step draws from, in safe-to-load form.

Python's `random`, NumPy's global generator, torch's CPU generator and every visible CUDA
generator. The capture holds only tensors, ints, floats, strings and lists, so it loads with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def capture() -> dict:
    """This process's generator states as plain data and tensors."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Put the generators back as `capture()` found them."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            torch.cuda.set_rng_state(cuda_states[torch.cuda.current_device() % len(cuda_states)])


def seed_rank(seed: int, rank: int) -> None:
    """Seed the global generators with a stream per rank (dropout masks, latents, jitter) that
    is the same in every run of `seed`: Python and NumPy with seed * 1000 + rank, torch + 1."""
    random.seed(seed * 1000 + rank)
    np.random.seed(seed * 1000 + rank)
    torch.manual_seed(seed * 1000 + rank + 1)


def seed_derived(text: str) -> None:
    """Seed the global generators from `text` (sha256): a stream that is the same whenever the
    same text is given, for ranks whose saved stream cannot be used (the world size changed)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed + 1)

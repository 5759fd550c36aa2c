"""The frozen StyleNeRF generator audio2nerf works through: where it comes from and how to rebuild it.

A source is recorded as a JSON-able dict in every audio2nerf checkpoint, so the talking head can
rebuild the same generator later: `{"kind": "checkpoint", "path": <step dir>, "preset", "model"}`
(a stylenerf.train checkpoint: its `G_ema.safetensors`, architecture from the run's plan.json),
`{"kind": "file", ...}` (a safetensors file with `G_ema.*`, `G.*` or bare names, e.g. converted
official weights) or `{"kind": "random", "preset", "seed"}` (random initialisation: benches, tests).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from launcher.layout import RunLayout
from nerffacespeech.configs.stylenerf import PRESETS
from nerffacespeech.models.stylenerf import Generator

LATEST = "latest"
G_FILE = "G_ema.safetensors"


def step_dir(path: Path) -> Path:
    """A checkpoint step folder from itself, its `latest` pointer file or the checkpoints folder."""
    path = Path(path)
    if path.is_dir() and (path / LATEST).is_file():
        path = path / LATEST
    if path.is_file() and path.name == LATEST:
        path = path.parent / path.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path.resolve()


def describe(spec: str, preset: str, seed: int = 0) -> dict:
    """The source record for a config's `generator` value (a path or "random")."""
    if spec == "random":
        return {"kind": "random", "preset": preset, "model": {}, "seed": seed}
    path = Path(spec)
    if path.suffix == ".safetensors":
        return {"kind": "file", "path": str(path.resolve()), "preset": preset, "model": {}}
    folder = step_dir(path)
    if not (folder / G_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {G_FILE}: not a stylenerf.train checkpoint")
    stage_dir = folder.parent.parent
    plan = json.loads(RunLayout(stage_dir.parent.parent).plan.read_text())
    config = next(s["config"] for s in plan["stages"] if s["name"] == stage_dir.name)
    return {"kind": "checkpoint", "path": str(folder), "preset": config.get("preset", "tiny"),
            "model": dict(config.get("model", {}))}


def build(record: dict, device: str | torch.device = "cpu") -> Generator:
    """The generator a record describes, frozen and in eval mode."""
    model_cfg = replace(PRESETS[record["preset"]].model, **record.get("model", {}))
    if record["kind"] == "random":
        with torch.random.fork_rng():
            torch.manual_seed(record.get("seed", 0))
            generator = Generator(model_cfg)
    else:
        from safetensors.torch import load_file

        generator = Generator(model_cfg)
        path = Path(record["path"])
        tensors = load_file(str(path / G_FILE if record["kind"] == "checkpoint" else path))
        for prefix in ("G_ema.", "G."):
            picked = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if picked:
                tensors = picked
                break
        generator.load_state_dict(tensors, strict=True)
    return generator.eval().requires_grad_(False).to(device)

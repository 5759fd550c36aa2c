"""SadTalker_V0.0.2_256.safetensors: read its audio networks and initialise our audio encoder.

The file holds several networks under prefixes (`audio2exp.`, `audio2pose.`, `face_3drecon.`,
...). Both audio networks start with the same Wav2Lip-style encoder: 13 blocks of
Conv2d + BatchNorm2d (`conv_block.0`, `conv_block.1`) that turn an 80x16 mel window into a
512-d vector. In `audio2exp` (SadTalker's SimpleWrapperV2) it sits at `audio2exp.audio_encoder.N`
followed by `audio2exp.mapping1` (Linear 512+64+1 -> 64 expression coefficients); in
`audio2pose` it is `audio2pose.audio_encoder.audio_encoder.N`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from .name_map import MappingReport, Rule, map_state_dict, shapes_of

# (in_channels, out_channels, kernel) of the 13 encoder blocks, as in SadTalker's
# src/audio2exp_models/networks.py and src/audio2pose_models/audio_encoder.py.
AUDIO_ENCODER_BLOCKS = (
    (1, 32, 3), (32, 32, 3), (32, 32, 3),
    (32, 64, 3), (64, 64, 3), (64, 64, 3),
    (64, 128, 3), (128, 128, 3), (128, 128, 3),
    (128, 256, 3), (256, 256, 3),
    (256, 512, 3), (512, 512, 1),
)
ENCODER_PREFIX = {"audio2exp": "audio2exp.audio_encoder.", "audio2pose": "audio2pose.audio_encoder.audio_encoder."}
OPTIONAL = ("num_batches_tracked",)   # BatchNorm's counter: used by nobody at inference


class SadTalkerError(ValueError):
    """The file lacks official keys or has other shapes."""


def audio_encoder_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """Official names and shapes of one audio encoder under `prefix`."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (cin, cout, k) in enumerate(AUDIO_ENCODER_BLOCKS):
        shapes[f"{prefix}{i}.conv_block.0.weight"] = (cout, cin, k, k)
        shapes[f"{prefix}{i}.conv_block.0.bias"] = (cout,)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}{i}.conv_block.1.{stat}"] = (cout,)
        shapes[f"{prefix}{i}.conv_block.1.num_batches_tracked"] = ()
    return shapes


OFFICIAL_SHAPES = {
    **audio_encoder_shapes(ENCODER_PREFIX["audio2exp"]),
    "audio2exp.mapping1.weight": (64, 512 + 64 + 1),
    "audio2exp.mapping1.bias": (64,),
    **audio_encoder_shapes(ENCODER_PREFIX["audio2pose"]),
}


def read(path: str | Path, prefixes: Sequence[str] = ("audio2exp.", "audio2pose.")) -> dict[str, torch.Tensor]:
    """The tensors under `prefixes`, read lazily from the safetensors file (other networks stay on disk)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys() if key.startswith(tuple(prefixes))}


def check_official(tensors: Mapping[str, torch.Tensor], prefixes: Sequence[str] = ("audio2exp.",)) -> list[str]:
    """Problems with the official audio keys under `prefixes`: missing names and other shapes."""
    problems = []
    for name, shape in OFFICIAL_SHAPES.items():
        if not name.startswith(tuple(prefixes)):
            continue
        if name not in tensors:
            if not name.endswith(OPTIONAL):
                problems.append(f"missing {name} {shape}")
        elif tuple(tensors[name].shape) != shape:
            problems.append(f"{name}: shape {tuple(tensors[name].shape)}, official {shape}")
    return problems


def encoder_rules(source: str = "audio2exp", target_prefix: str = "") -> tuple[Rule, ...]:
    """Rules mapping one SadTalker audio encoder onto `target_prefix` + the same block names."""
    if source not in ENCODER_PREFIX:
        raise ValueError(f"source must be one of {sorted(ENCODER_PREFIX)}")
    escaped = ENCODER_PREFIX[source].replace(".", r"\.")
    return (Rule(escaped + r"(.+)", target_prefix + r"\1", f"{source}'s audio encoder"),
            Rule(r".+", None, "not part of the audio encoder"))


def init_audio_encoder(module: torch.nn.Module, path: str | Path, source: str = "audio2exp",
                       target_prefix: str = "", rules: Sequence[Rule] | None = None) -> MappingReport:
    """Load SadTalker's audio encoder into `module` where names map and shapes agree.

    Tensors whose shapes disagree are left at their initial values and listed in the report.
    """
    tensors = read(path, (f"{source}.",))
    problems = check_official(tensors, (f"{source}.",))
    if problems:
        raise SadTalkerError(f"{path}: not the official SadTalker layout:\n  " + "\n  ".join(problems))
    report = map_state_dict(tensors, shapes_of(module), rules or encoder_rules(source, target_prefix))
    if not report.mapped:
        raise SadTalkerError(f"{path}: no {source} tensor fits the model\n{report.summary()}")
    module.load_state_dict(report.mapped, strict=False)
    return report

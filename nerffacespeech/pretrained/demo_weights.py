"""Export the demo's starting weights from a training run's checkpoint into one safetensors file.

`scripts/train_demo_weights.sh` trains them on the bundled data; `jobs/demo.yaml` starts from
the files this writes (`init_from`): the StyleNeRF file holds `G.*`, `D.*` and `G_ema.*`, the
audio2nerf file the training objective's state (`net.*`, the clips' `latents`, `w_init`).

    python -m nerffacespeech.pretrained.demo_weights stylenerf|audio2nerf CHECKPOINTS_DIR OUT.safetensors
"""
from __future__ import annotations

import argparse
from pathlib import Path

PARTS = {"stylenerf": ("G", "D", "G_ema"), "audio2nerf": ("A2N",)}   # checkpoint files -> key prefixes
PREFIXED = {"stylenerf"}                                              # A2N's keys go in bare


def step_folder(checkpoints: Path) -> Path:
    """The step folder `checkpoints/latest` names."""
    return checkpoints / (checkpoints / "latest").read_text().strip()


def export(kind: str, checkpoints: Path, out: Path) -> dict:
    """Write the newest checkpoint's weights of `kind` to `out` (atomically); returns its metadata."""
    from safetensors.torch import load_file, save_file

    folder = step_folder(checkpoints)
    tensors = {}
    for part in PARTS[kind]:
        for key, value in load_file(str(folder / f"{part}.safetensors")).items():
            tensors[f"{part}.{key}" if kind in PREFIXED else key] = value.contiguous()
    metadata = {"kind": kind, "checkpoint": folder.name}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(out)
    return metadata


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=sorted(PARTS))
    p.add_argument("checkpoints", type=Path, help="a stage's checkpoints/ folder (its `latest` is exported)")
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    print(export(args.kind, args.checkpoints, args.out))


if __name__ == "__main__":
    main()

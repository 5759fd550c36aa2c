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


def step_folders(checkpoints: Path) -> list[Path]:
    """The committed step folders, newest first."""
    from launcher.runtime.checkpoint import committed_steps, step_dirname

    return [checkpoints / step_dirname(step) for step in reversed(committed_steps(checkpoints))]


def export(kind: str, checkpoints: Path, out: Path) -> dict:
    """Write the weights of `kind` from the newest checkpoint whose tensors are all finite (a
    run that diverged late still gives its last good weights) to `out`, atomically; returns
    its metadata. Raises ValueError when no checkpoint is finite."""
    from safetensors.torch import load_file, save_file

    from launcher.runtime.finite import non_finite

    skipped = []
    for folder in step_folders(checkpoints):
        tensors = {}
        for part in PARTS[kind]:
            for key, value in load_file(str(folder / f"{part}.safetensors")).items():
                tensors[f"{part}.{key}" if kind in PREFIXED else key] = value.contiguous()
        bad = non_finite(tensors.items())
        if bad:
            skipped.append(f"{folder.name} ({len(bad)} non-finite tensors, e.g. {bad[0]})")
            continue
        metadata = {"kind": kind, "checkpoint": folder.name, "skipped": "; ".join(skipped)}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(out)
        return metadata
    raise ValueError(f"{checkpoints}: no checkpoint with finite weights to export"
                     + (f" (skipped: {'; '.join(skipped)})" if skipped else " (none committed)"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=sorted(PARTS))
    p.add_argument("checkpoints", type=Path, help="a stage's checkpoints/ folder (its newest finite checkpoint is exported)")
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    print(export(args.kind, args.checkpoints, args.out))


if __name__ == "__main__":
    main()

"""Generation: a WAV and trained StyleNeRF + audio2nerf → talking-head MP4s (docs/GENERATION.md).

`main(ctx)` is the launcher task `generate`; `python -m nerffacespeech.generate` is the CLI.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path


def main(ctx) -> None:
    """The `generate` stage: clips into <stage dir>/samples (or `output_dir`), listed in outputs.json."""
    from launcher.atomic import write_json
    from nerffacespeech.configs.generate import GenerateConfig

    from .pipeline import generate

    cfg, problems = GenerateConfig.parse(ctx.config)
    if cfg is None:
        raise ValueError("generate config: " + "; ".join(f"{f}: {m}" for f, m in problems))
    if cfg.device == "auto":                      # the stage's device (local backend) decides
        cfg = replace(cfg, device=ctx.device)
    clips = generate(cfg, Path(cfg.output_dir) if cfg.output_dir else ctx.samples_dir, ctx.run_dir)
    summary = [{"identity": c.identity, "video": str(c.video), "sheet": str(c.sheet), "frames": c.frames,
                "render_seconds": round(c.render_seconds, 3)} for c in clips]
    write_json(ctx.layout.outputs, {"clips": summary})
    print(json.dumps({"generated": summary}), flush=True)

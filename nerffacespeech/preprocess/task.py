"""The launcher tasks: `run_shard` processes shard i's clips, `merge` combines all shards.

Each clip is one item: processed and committed atomically, or recorded as skipped with its
reason; finished items (same settings) are skipped on re-run, so a requeued shard redoes only
the item that was in flight. A stop request is honoured between items (exit 75 via
StopForRequeue, step = items finished in this attempt).
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

from launcher.runtime.preemption import StopForRequeue
from nerffacespeech.configs.preprocess import PreprocessConfig
from nerffacespeech.data import layout, sharding
from nerffacespeech.data.processed import FORMAT_VERSION, ProcessedData, fingerprint

from .errors import BadInput


def load_config(ctx) -> PreprocessConfig:
    cfg, problems = PreprocessConfig.parse(ctx.config)
    if cfg is None:
        raise ValueError("preprocess config: " + "; ".join(f"{f}: {m}" for f, m in problems))
    return cfg


def output_data(ctx, cfg: PreprocessConfig) -> ProcessedData:
    return ProcessedData(Path(cfg.output_dir) if cfg.output_dir else ctx.run_layout.processed_data)


def shard_clips(cfg: PreprocessConfig, shard_index: int, shard_count: int) -> list[layout.Clip]:
    return sharding.assign(layout.find_clips(Path(cfg.data_dir)), shard_count)[shard_index]


def run_shard(ctx) -> None:
    """Process this shard's clips; write its report to <out>/shards/shard-IIIII-of-NNNNN.json."""
    cfg = load_config(ctx)
    out = output_data(ctx, cfg)
    clips = shard_clips(cfg, ctx.shard_index, ctx.shard_count)
    settings = fingerprint(cfg.fingerprint_fields())
    tools = _Tools(cfg, ctx.device)
    finished_now = 0
    for clip in clips:
        if out.finished(clip.key, settings):
            continue
        if ctx.stop is not None and ctx.stop.requested:
            _write_report(out, ctx, clips, settings)
            raise StopForRequeue(finished_now)
        status = _process_one(clip, cfg, tools, out, settings)
        out.log_processed(ctx.shard_index, {"key": clip.key, "status": status,
                                            "shard": ctx.shard_index, "attempt": ctx.attempt})
        finished_now += 1
        print(f"[preprocess] shard {ctx.shard_index}: {clip.key} {status}", flush=True)
    _write_report(out, ctx, clips, settings)


def _process_one(clip, cfg, tools, out: ProcessedData, settings: str) -> str:
    from .clip import process_clip

    out.remove_partials(clip.key)
    started = time.time()
    record = {"version": FORMAT_VERSION, "fingerprint": settings, "key": clip.key,
              "person": clip.person, "clip": clip.name}
    try:
        result = process_clip(clip, cfg, tools.landmarker, tools.fitter, scratch=out.root)
    except BadInput as bad:
        record.update(status="skipped", kind=bad.kind, detail=bad.detail, frames=len(clip.frames),
                      kept=0, frame_skips=[])
    else:
        out.commit_clip(clip.key, result.crops, result.arrays)
        record.update(status="done", frames=result.frames, kept=len(result.crops),
                      frame_skips=result.frame_skips, landmarker=tools.landmarker.name,
                      face_model=tools.model_name)
    record["seconds"] = round(time.time() - started, 3)
    out.write_outcome(clip.key, record)
    return record["status"]


class _Tools:
    """The landmarker and fitter, built once per shard process (lazily: a shard of finished
    items needs neither)."""

    def __init__(self, cfg: PreprocessConfig, device: str):
        self.cfg, self.device = cfg, device
        self._landmarker = self._fitter = None
        self.model_name = "none"

    @property
    def landmarker(self):
        if self._landmarker is None:
            from .landmarks import make_landmarker

            self._landmarker = make_landmarker(self.cfg.landmarker, self.cfg.pretrained_root(), self._torch_device())
        return self._landmarker

    @property
    def fitter(self):
        if not self.cfg.fit3dmm.enabled:
            return None
        if self._fitter is None:
            from dataclasses import replace

            from . import bfm, fit3dmm, template

            path = self.cfg.bfm_file()
            fit_cfg = self.cfg.fit3dmm
            if self.cfg.synthetic_face_model:
                model, self.model_name = bfm.from_arrays(template.build("random")), "synthetic"
            elif path.is_file():
                model, self.model_name = bfm.load_bfm(path), "bfm09"
            else:                  # no BFM: pose-only fitting with the built-in generic head
                model, self.model_name = bfm.from_arrays(template.build("zero")), "template"
                fit_cfg = replace(fit_cfg, photometric=False)
            self._fitter = fit3dmm.ClipFitter(model, fit_cfg, self._torch_device())
        return self._fitter

    def _torch_device(self) -> str:
        if self.device in ("cpu", "cuda"):
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _write_report(out: ProcessedData, ctx, clips, settings: str) -> None:
    """Per-shard report: every item's outcome, and a per-identity summary of kept items."""
    items = [out.read_outcome(c.key) for c in clips]
    items = [i if i and i.get("fingerprint") == settings else {"key": c.key, "status": "pending"}
             for c, i in zip(clips, items)]
    out.write_shard_report(ctx.shard_index, ctx.shard_count,
                           {"shard": ctx.shard_index, "shard_count": ctx.shard_count, "attempt": ctx.attempt,
                            "items": items, "summary": summarise(items)})


def summarise(items: list[dict]) -> dict:
    """Per identity: clips done/skipped, frames kept/dropped, and the reasons counted."""
    people: dict[str, dict] = defaultdict(lambda: {"clips_done": 0, "clips_skipped": 0, "frames_kept": 0,
                                                   "frames_dropped": 0, "reasons": Counter()})
    for item in items:
        person = people[item["key"].split("/")[0]]
        if item["status"] == "done":
            person["clips_done"] += 1
            person["frames_kept"] += item["kept"]
            person["frames_dropped"] += len(item["frame_skips"])
            person["reasons"].update(s["kind"] for s in item["frame_skips"])
        elif item["status"] == "skipped":
            person["clips_skipped"] += 1
            person["reasons"][item["kind"]] += 1
    return {k: {**v, "reasons": dict(sorted(v["reasons"].items()))} for k, v in sorted(people.items())}


def merge(ctx) -> None:
    """Combine every shard's outcomes into metadata/{poses,expressions,landmarks}.json and the
    manifest; fails if an item of the plan has no outcome yet (a shard did not finish)."""
    import numpy as np

    cfg = load_config(ctx)
    out = output_data(ctx, cfg)
    settings = fingerprint(cfg.fingerprint_fields())
    clips = layout.find_clips(Path(cfg.data_dir))
    items = [out.finished(c.key, settings) for c in clips]
    missing = [c.key for c, i in zip(clips, items) if i is None]
    if missing:
        raise RuntimeError(f"{len(missing)} items have no outcome (unfinished shards?): {missing[:5]}")
    poses, expressions, marks = {}, {}, {}
    for item in items:
        if item["status"] != "done":
            continue
        clip = out.read_clip(item["key"])
        for j, frame in enumerate(clip.frame_index.tolist()):
            name = f"{item['key']}/{frame:05d}"
            marks[name] = np.round(clip.arrays["landmarks_aligned"][j], 2).tolist()
            if clip.fitted:
                yaw, pitch, radius = clip.arrays["poses"][j].tolist()
                poses[name] = {"yaw": round(yaw, 6), "pitch": round(pitch, 6), "radius": round(radius, 6)}
                expressions[name] = np.round(clip.expressions[j], 5).tolist()
    convention = {"poses": "StyleNeRF angular camera: yaw θ, pitch φ in radians (frontal π/2, π/2), "
                           "radius relative to the nominal distance; FOV 12°",
                  "expressions": "BFM09 expression coefficients (64, Deep3DFaceRecon)",
                  "landmarks": f"68 points (iBUG order) in aligned-crop pixels at {cfg.resolution}"}
    for name, data in (("poses", poses), ("expressions", expressions), ("landmarks", marks)):
        out.write_metadata(name, convention[name], data)
    out.write_manifest({
        "version": FORMAT_VERSION, "fingerprint": settings, "settings": cfg.fingerprint_fields(),
        "data_dir": str(cfg.data_dir), "resolution": cfg.resolution,
        "clips": [{"key": i["key"], "status": i["status"], "frames": i["frames"], "kept": i["kept"],
                   **({"kind": i["kind"], "detail": i["detail"]} if i["status"] == "skipped" else {})}
                  for i in items],
        "counts": {"clips": len(items), "clips_done": sum(i["status"] == "done" for i in items),
                   "frames_kept": sum(i["kept"] for i in items)},
        "summary": summarise(items)})
    print(json.dumps({"merged": len(items), "frames": len(marks)}), flush=True)

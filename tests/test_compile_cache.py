"""torch.compile's caches live in the run directory: a later attempt (a fresh process) reuses the
kernels an earlier one compiled, and a changed software stack or model compiles afresh."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from launcher.runtime import compile_cache
from nerffacespeech.configs.stylenerf import TrainConfig
from nerffacespeech.train.stylenerf import compile_cache_key

ROOT = Path(__file__).resolve().parents[1]


def _start_compiling(cache_root: Path) -> subprocess.Popen:
    """A fresh process (an attempt, or one rank of it) compiling with the run's cache at `cache_root`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "compile_cache_probe.py"), str(cache_root)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _counters(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _compile_in_fresh_process(cache_root: Path) -> dict:
    return _counters(_start_compiling(cache_root))


def test_a_second_attempt_takes_its_compiled_graphs_from_the_run_directory(tmp_path):
    first = _compile_in_fresh_process(tmp_path / "compile-cache")
    [folder] = (tmp_path / "compile-cache").iterdir()                   # one key
    assert {"fxgraph", "aotautograd"} <= {p.name for p in folder.iterdir()}
    second = _compile_in_fresh_process(tmp_path / "compile-cache")
    assert first["inductor"].get("fxgraph_cache_miss", 0) > 0 and "fxgraph_cache_hit" not in first["inductor"]
    assert second["inductor"].get("fxgraph_cache_hit", 0) == first["inductor"]["fxgraph_cache_miss"]
    assert "fxgraph_cache_miss" not in second["inductor"]
    assert second["aot_autograd"].get("autograd_cache_hit", 0) > 0      # the backward graph too


def test_ranks_compiling_at_once_into_one_folder_leave_a_cache_the_next_attempt_reuses(tmp_path):
    """The ranks of a job share the run's folder on the shared filesystem and compile at the same
    time; inductor's atomic writes let both finish, and the next attempt compiles nothing."""
    ranks = [_start_compiling(tmp_path / "compile-cache") for _ in range(2)]
    try:
        first = [_counters(rank) for rank in ranks]
    finally:
        for rank in ranks:                                               # one failed: the other must not linger
            rank.kill()
    assert all(c["inductor"].get("fxgraph_cache_miss", 0) + c["inductor"].get("fxgraph_cache_hit", 0) > 0
               for c in first)
    resumed = _compile_in_fresh_process(tmp_path / "compile-cache")
    assert "fxgraph_cache_miss" not in resumed["inductor"] and resumed["inductor"].get("fxgraph_cache_hit", 0) > 0
    assert resumed["aot_autograd"].get("autograd_cache_hit", 0) > 0


def test_the_cache_folder_changes_with_the_torch_version(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)     # restored after the test
    cpu = torch.device("cpu")
    before = compile_cache.use_run_cache(tmp_path, cpu, {"width": 8})
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".other")
    after = compile_cache.use_run_cache(tmp_path, cpu, {"width": 8})
    assert before != after and before.parent == after.parent == tmp_path


def test_the_stylenerf_key_follows_the_model_but_not_the_schedule():
    cfg, problems = TrainConfig.parse({"data": "synthetic", "preset": "paper256"})
    assert not problems
    cfg = cfg.resolved(1)
    key = compile_cache_key(cfg)
    assert compile_cache_key(replace(cfg, max_steps=10, lr_g=0.1, kimg=5.0)) == key
    assert compile_cache_key(replace(cfg, model={"fg_hidden": 64})) != key
    assert compile_cache_key(replace(cfg, batch_per_gpu=8)) != key

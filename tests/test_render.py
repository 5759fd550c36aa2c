"""`render` shows exactly the batch scripts `submit` would hand to sbatch; these tests read
the scripts generated for the shipped StyleNeRF specs."""
import re
import shlex
from pathlib import Path

import pytest

from tests.launcher_helpers import launcher

ROOT = Path(__file__).resolve().parents[1]
# The shipped specs evaluate FID, whose Inception weights this machine cannot download, and
# validation refuses a spec whose weights are missing (tests/test_pretrained_checks.py); the
# scripts do not depend on the metric, so these tests evaluate SWD instead. The specs' data
# folder exists on the cluster, not here: the bundled faces stand in (validation checks it).
WITHOUT_FID = ("--set", "stages.train.config.metrics=[swd]",
               "--set", f"stages.train.config.data={ROOT / 'data' / 'sample' / 'faces' / 'lfw'}")


def rendered(spec: str, *extra: str) -> str:
    return launcher("render", str(ROOT / "jobs" / spec), *WITHOUT_FID, *extra, cwd=ROOT, check=True).stdout


def sbatch_options(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)(?:=(.*))?$", script, flags=re.M))


def step_line(script: str) -> list[str]:
    """The step launcher.supervise runs, as render shows it above the batch script."""
    line = script.split("launcher.supervise, which runs:", 1)[1].split("\n", 2)[1]
    return shlex.split(line.lstrip("# "))


@pytest.mark.parametrize("spec,nodes", [("stylenerf_8gpu.yaml", 1), ("stylenerf_4x8gpu.yaml", 4)])
def test_stylenerf_script_asks_for_the_nodes_gpus_signal_and_requeue(spec, nodes):
    opts = sbatch_options(rendered(spec))
    assert opts["nodes"] == str(nodes)
    assert opts["gpus-per-node"] == "8"
    assert opts["ntasks-per-node"] == "1"            # one torchrun agent per node
    assert opts["signal"] == "USR2@300"               # no B: the step's processes get it
    assert "requeue" in opts
    assert opts["partition"] == "gpu"


@pytest.mark.parametrize("spec,nodes", [("stylenerf_8gpu.yaml", 1), ("stylenerf_4x8gpu.yaml", 4)])
def test_stylenerf_step_runs_torchrun_per_node_with_c10d_rendezvous(spec, nodes):
    words = step_line(rendered(spec))
    if nodes > 1:
        assert words[0] == "srun" and f"--nodes={nodes}" in words and "--ntasks-per-node=1" in words
    else:       # one node: torchrun in the batch step (srun SIGKILLs its step on SIGTERM)
        assert words[:3] == [words[0], "-m", "launcher.shield"] and "srun" not in words
    torchrun = words[words.index("torch.distributed.run") + 1:]
    assert f"--nnodes={nodes}" in torchrun and "--nproc_per_node=8" in torchrun
    assert "--rdzv_backend=c10d" in torchrun and "--rdzv_endpoint={rdzv_endpoint}" in torchrun
    assert "--rdzv_id=$SLURM_JOB_ID" in torchrun
    shield = words.index("launcher.shield")
    assert words[shield + 1:shield + 4] == ["--signals", "USR2,TERM,INT", "--"]   # torchrun ignores them


@pytest.mark.parametrize("spec,name", [("stylenerf_8gpu.yaml", "stylenerf-ffhq1024"),
                                       ("stylenerf_4x8gpu.yaml", "stylenerf-ffhq1024-4node")])
def test_every_rank_runs_the_entry_with_the_run_directory_and_stage(spec, name):
    words = step_line(rendered(spec))
    assert words[-4:] == ["-m", "launcher.entry", str(ROOT / "runs" / f"{name}-RUN_ID"), "train"]


def test_the_multinode_spec_checks_the_total_batch_against_the_world_size():
    result = launcher("validate", str(ROOT / "jobs" / "stylenerf_4x8gpu.yaml"), *WITHOUT_FID,
                      "--set", "stages.train.config.batch_total=32", cwd=ROOT)
    assert result.returncode == 2
    assert "stages.train.config" in result.stderr and "32" in result.stderr



def test_render_prints_the_script_of_a_spec_whose_weights_are_missing_under_its_problems(tmp_path):
    spec, data = str(ROOT / "jobs" / "stylenerf_8gpu.yaml"), WITHOUT_FID[2:]    # FID kept
    shown = launcher("render", spec, *data, cwd=tmp_path, check=True).stdout
    problems, script = shown.split("#!/bin/bash", 1)
    assert "submit refuses this spec" in problems
    assert re.search(r"FID needs \S*pretrained_networks/pt_inception\S*: missing", problems), problems
    assert sbatch_options(script)["gpus-per-node"] == "8"
    refused = launcher("submit", spec, *data, cwd=tmp_path)
    assert refused.returncode == 2 and "FID needs" in refused.stderr and not (tmp_path / "runs").exists()


def test_local_render_shows_how_many_shards_run_at_once(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: par\nlocal: {max_parallel: 2}\nstages:\n"
                    "  shards: {task: diagnose.items, array: 5, config: {items: 5}}\n")
    shown = launcher("render", str(spec), cwd=tmp_path, check=True).stdout
    assert "# local: 5 shards, 2 at once, 1 process(es)" in shown

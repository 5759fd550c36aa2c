"""The shipped specs whose tasks exist validate as they are (or pointed at the sample data), apart
from pretrained files they need that this machine has not downloaded (FID's Inception weights)."""
from pathlib import Path

import pytest

from tests.launcher_helpers import launcher

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ["--set", "stages.preprocess.config.data_dir=data/sample",
          "--set", "stages.merge.config.data_dir=data/sample"]
FACES = "data/sample/faces/lfw"     # the StyleNeRF specs' data/processed exists on the cluster only
SPEECH = "data/sample/audio/astronaut/00001.wav"   # pipeline.yaml's data/raw/test_audio.wav too
# audio2nerf_8gpu.yaml reads other runs' outputs: a folder and a random generator stand in
A2N = ["--set", "stages.train.config.data=data/sample", "--set", "stages.train.config.generator=random"]
READY = {"demo.yaml": [], "demo_weights_data.yaml": [], "demo_weights_stylenerf.yaml": [],
         "demo_weights_audio2nerf.yaml": ["--set", "stages.audio2nerf.config.data=data/sample"], "debug_1gpu.yaml": [], "stylenerf_8gpu.yaml": ["--set", f"stages.train.config.data={FACES}"],
         "stylenerf_4x8gpu.yaml": ["--set", f"stages.train.config.data={FACES}"], "preprocess_cpu.yaml": SAMPLE,
         "audio2nerf_8gpu.yaml": A2N, "pipeline.yaml": SAMPLE + ["--set", f"stages.stylenerf.config.data={FACES}",
                                                                "--set", f"stages.generate.config.audio={SPEECH}"]}


@pytest.mark.parametrize("spec", sorted(READY))
def test_shipped_spec_validates(spec):
    result = launcher("validate", str(ROOT / "jobs" / spec), *READY[spec], cwd=ROOT)
    problems = [line for line in result.stderr.splitlines()
                if not ("pt_inception-2015-12-05-6726825d.pth: missing" in line and "fetch inception_fid" in line)]
    assert result.returncode == (2 if result.stderr else 0) and not problems, result.stdout + result.stderr


def test_a_missing_data_folder_is_refused_before_anything_is_submitted(tmp_path):
    result = launcher("submit", str(ROOT / "jobs" / "preprocess_cpu.yaml"),
                      "--set", f"run_root={tmp_path}", cwd=ROOT)
    assert result.returncode == 2
    assert "preprocess_cpu.yaml:12: stages.preprocess.config.data_dir: 'data/raw' is not a folder" \
        in result.stderr
    assert not list(tmp_path.iterdir())


def test_the_include_only_base_says_so_instead_of_asking_for_a_name():
    result = launcher("validate", str(ROOT / "jobs" / "base_slurm.yaml"), cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{ROOT / 'jobs' / 'base_slurm.yaml'}:1: <spec>: has neither name nor stages: an include-only base "
        "(settings shared by job specs), not a job; validate a spec that names it in `include:` "
        "(e.g. jobs/pipeline.yaml)"]

"""The shipped specs whose tasks exist validate as they are (or pointed at the sample data)."""
from pathlib import Path

import pytest

from tests.launcher_helpers import launcher

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ["--set", "stages.preprocess.config.data_dir=data/sample",
          "--set", "stages.merge.config.data_dir=data/sample"]
READY = {"demo.yaml": [], "debug_1gpu.yaml": [], "stylenerf_8gpu.yaml": [],
         "stylenerf_4x8gpu.yaml": [], "preprocess_cpu.yaml": SAMPLE,
         "audio2nerf_8gpu.yaml": [], "pipeline.yaml": SAMPLE}


@pytest.mark.parametrize("spec", sorted(READY))
def test_shipped_spec_validates(spec):
    launcher("validate", str(ROOT / "jobs" / spec), *READY[spec], cwd=ROOT, check=True)


def test_a_missing_data_folder_is_refused_before_anything_is_submitted(tmp_path):
    result = launcher("submit", str(ROOT / "jobs" / "preprocess_cpu.yaml"),
                      "--set", f"run_root={tmp_path}", cwd=ROOT)
    assert result.returncode == 2
    assert "preprocess_cpu.yaml:12: stages.preprocess.config.data_dir: 'data/raw' is not a folder" \
        in result.stderr
    assert not list(tmp_path.iterdir())

"""`launcher validate` refuses a spec whose stage would miss a pretrained file it needs, naming
the file and how to get it (through the task checks of `nerffacespeech.configs`), and accepts
one that only lacks files optional for its config. The launcher stays torch-free."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def validate(tmp_path: Path, stage: str) -> subprocess.CompletedProcess:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: t\nbackend: local\nrun_root: runs\nstages:\n{stage}")
    code = ("import atexit, os, runpy, sys\n"                       # exit 99 if torch was imported
            "atexit.register(lambda: 'torch' in sys.modules and os._exit(99))\n"
            "sys.argv = ['launcher', 'validate', 'spec.yaml']\n"
            "runpy.run_module('launcher', run_name='__main__', alter_sys=True)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def preprocess_stage(pretrained: Path, landmarker: str) -> str:
    return (f"  prep:\n    task: preprocess\n    config:\n      data_dir: {SAMPLE}\n"
            f"      pretrained_dir: {pretrained}\n      landmarker: {landmarker}\n")


def test_fan_weights_missing_is_refused_at_the_landmarker_line_with_the_file_and_the_fetch_command(tmp_path):
    result = validate(tmp_path, preprocess_stage(tmp_path / "empty", "fan"))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines                                    # s3fd and 2DFAN4
    for line, name, file in zip(lines, ("s3fd", "fan_2d"), ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar")):
        assert line.startswith("spec.yaml:10: stages.prep.config.landmarker: fan (or use auto/dlib) needs "), line
        assert f"{tmp_path / 'empty' / 'face_alignment' / file}: missing" in line
        assert f"python -m nerffacespeech.pretrained fetch {name}" in line


def test_a_weight_file_of_the_wrong_format_is_refused(tmp_path):
    fa = tmp_path / "weights" / "face_alignment"
    fa.mkdir(parents=True)
    (fa / "s3fd-619a316812.pth").write_text("<html>Not Found</html>")
    (fa / "2DFAN4-11f355bf06.pth.tar").write_text("<html>Not Found</html>")
    result = validate(tmp_path, preprocess_stage(tmp_path / "weights", "fan"))
    assert result.returncode == 2 and "bad format" in result.stderr, result.stderr


@pytest.mark.parametrize("landmarker", ["auto", "dlib"])
def test_weights_optional_for_the_config_are_not_required(tmp_path, landmarker):
    """auto/dlib need no FAN weights, and no BFM means pose-only fitting: an empty folder is fine."""
    result = validate(tmp_path, preprocess_stage(tmp_path / "empty", landmarker))
    assert result.returncode == 0, result.stdout + result.stderr


def stylenerf_stage(metrics: str) -> str:
    return (f"  train:\n    task: stylenerf.train\n"
            f"    config: {{data: {SAMPLE / 'faces'}, preset: tiny, engine: ddp, zero_stage: 0, metrics: {metrics}}}\n")


def test_fid_without_the_inception_weights_is_refused_and_swd_needs_none(tmp_path, monkeypatch):
    monkeypatch.setenv("NFS_PRETRAINED_ROOT", str(tmp_path / "empty"))
    result = validate(tmp_path, stylenerf_stage("[swd, fid2k]"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "stages.train.config.metrics: FID needs " in result.stderr
    assert "pt_inception-2015-12-05-6726825d.pth: missing" in result.stderr
    assert "fetch inception_fid" in result.stderr
    assert validate(tmp_path, stylenerf_stage("[swd]")).returncode == 0

"""`python -m launcher validate` reports every problem of a spec in one run: the spec's own
fields, and each stage's config (types, values, files and the split across processes)
together, so that fixing one problem never reveals the next one.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "data" / "sample" / "faces" / "lfw"
SAMPLE = ROOT / "data" / "sample"


def spec_with(tmp_path: Path, task: str, config: str, top: str = "", processes: int = 2) -> Path:
    """A one-stage spec for `task` on local CPU processes; `config` is line 7 onwards."""
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: t\nstages:\n  train:\n    task: {task}\n    resources: {{tasks_per_node: {processes}}}\n"
                    f"    config:\n{config}{top}")
    return path


def problems(spec: Path) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "launcher", "validate", str(spec)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stderr.splitlines()


def fields_by_line(spec: Path) -> list[str]:
    """`LINE: FIELD` of every problem reported."""
    return [line[len(f"{spec}:"):].split(": ")[0] + ": " + line.split(": ")[1] for line in problems(spec)]


def test_a_training_data_path_that_does_not_exist_is_reported(tmp_path):
    spec = spec_with(tmp_path, "stylenerf.train", "      data: /nonexistent\n")
    assert problems(spec) == [f"{spec}:7: stages.train.config.data: '/nonexistent' does not exist (a folder "
                              "or zip of aligned face images; relative paths are taken from the directory you "
                              "run the launcher in)"]


def test_type_value_and_file_problems_of_a_config_are_reported_together(tmp_path):
    spec = spec_with(tmp_path, "stylenerf.train",
                     "      data: /nonexistent\n      zero_stage: two\n      engine: dp\n")
    assert fields_by_line(spec) == ["8: stages.train.config.zero_stage", "9: stages.train.config.engine",
                                    "7: stages.train.config.data"]


def test_the_batch_split_is_reported_alongside_other_config_problems(tmp_path):
    """tiny's 8 images per process on 2 processes: 20 is no whole number of micro-batches."""
    spec = spec_with(tmp_path, "stylenerf.train",
                     f"      data: {FACES}\n      precision: fp64\n      batch_total: 20\n")
    assert fields_by_line(spec) == ["8: stages.train.config.precision", "9: stages.train.config.batch_total"]


def test_preprocess_value_and_file_problems_are_reported_together(tmp_path):
    spec = spec_with(tmp_path, "preprocess", "      data_dir: /nonexistent\n      resolution: 33\n"
                                             "      fit3dmm: {bfm_path: /no/such.mat}\n")
    assert fields_by_line(spec) == ["8: stages.train.config.resolution", "7: stages.train.config.data_dir",
                                    "9: stages.train.config.fit3dmm.bfm_path"]


@pytest.mark.parametrize("task, config, expected", [
    ("stylenerf.train", f"      data: {FACES}\n      lr_g: fast\n      style_mixing: 2\n",
     ["8: stages.train.config.lr_g", "9: stages.train.config.style_mixing"]),
    ("audio2nerf.train", "      audio_dim: wide\n      seq_len: 1\n",
     ["7: stages.train.config.audio_dim", "8: stages.train.config.seq_len"]),
    ("generate", "      audio: 5\n      seeds: [0]\n      crf: 60\n",
     ["7: stages.train.config.audio", "9: stages.train.config.crf"]),
    ("preprocess", f"      data_dir: {SAMPLE}\n      fps: thirty\n      resolution: 33\n",
     ["8: stages.train.config.fps", "9: stages.train.config.resolution"]),
], ids=["stylenerf", "audio2nerf", "generate", "preprocess"])
def test_every_task_reports_type_and_value_problems_together(tmp_path, task, config, expected):
    processes = 1 if task == "generate" else 2          # generate runs as one process
    assert fields_by_line(spec_with(tmp_path, task, config, processes=processes)) == expected


def test_spec_problems_and_config_problems_are_reported_together(tmp_path):
    spec = spec_with(tmp_path, "stylenerf.train", "      data: /nonexistent\n", top="bogus: 1\n")
    assert fields_by_line(spec) == ["8: bogus", "7: stages.train.config.data"]


def test_validating_every_task_config_imports_no_torch(tmp_path):
    spec = tmp_path / "all.yaml"
    spec.write_text(f"name: t\nstages:\n  p: {{task: preprocess, config: {{data_dir: {SAMPLE}}}}}\n"
                    f"  s: {{task: stylenerf.train, config: {{data: {FACES}}}}}\n"
                    f"  a: {{task: audio2nerf.train, config: {{}}}}\n"
                    f"  g: {{task: generate, config: {{audio: data/sample/audio/astronaut/00001.wav, seeds: [0]}}}}\n")
    code = ("import sys; from launcher.cli import main; rc = main(['validate', sys.argv[1]]); "
            "assert rc == 0 and 'torch' not in sys.modules, (rc, 'torch' in sys.modules)")
    subprocess.run([sys.executable, "-c", code, str(spec)], cwd=ROOT, check=True, timeout=60)


def test_the_files_a_stage_reads_are_checked_but_not_what_earlier_stages_write(tmp_path):
    """A missing WAV, a training data path that is a plain file, and a typo in a task config key
    are refused at `validate` with `file:line: field: message`; audio2nerf's data and generator
    left unset (the merge and stylenerf stages of the run write them) are not required."""
    spec = tmp_path / "paths.yaml"
    (tmp_path / "faces.txt").write_text("not images")
    spec.write_text(f"name: t\nstages:\n"
                    f"  s: {{task: stylenerf.train, config: {{data: {tmp_path / 'faces.txt'}}}}}\n"
                    f"  a: {{task: audio2nerf.train, after: [s], config: {{lr: 0.001, max_step: 3}}}}\n"
                    f"  g: {{task: generate, after: [a], config: {{audio: {tmp_path / 'talk.wav'}, seeds: [0]}}}}\n")
    assert problems(spec) == [
        f"{spec}:3: stages.s.config.data: '{tmp_path / 'faces.txt'}' is neither a folder nor a .zip (a folder or "
        "zip of aligned face images; relative paths are taken from the directory you run the launcher in)",
        f"{spec}:4: stages.a.config.max_step: unknown key (did you mean 'max_steps'?)",
        f"{spec}:5: stages.g.config.audio: '{tmp_path / 'talk.wav'}' does not exist (the speech file to animate; "
        "relative paths are taken from the directory you run the launcher in)"]

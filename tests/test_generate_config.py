"""The `generate` stage's config check, as the launcher runs it before submitting."""
from pathlib import Path

from nerffacespeech.configs.generate import GenerateConfig, check

WAV = str(Path(__file__).resolve().parents[1] / "data/sample/audio/astronaut/00001.wav")


def test_a_valid_config_parses_with_defaults():
    cfg, problems = GenerateConfig.parse({"audio": "a.wav", "seeds": [0, 3]})
    assert problems == [] and cfg.truncation == 0.7 and cfg.seeds == (0, 3) and cfg.camera == "fixed"


def test_every_problem_is_reported_with_its_field():
    problems = dict(check({"audio": WAV, "seeds": [], "camera": "poses", "truncation": 2, "crf": 60,
                           "smoothing": 1}, {}))
    assert problems["smoothing"] == "unknown key (did you mean 'smoothing_frames'?)"
    problems = dict(check({"audio": WAV, "seeds": [], "camera": "poses", "truncation": 2, "crf": 60}, {}))
    assert set(problems) == {"seeds", "truncation", "poses", "crf"}
    assert "no identity" in problems["seeds"] and "poses.json" in problems["poses"]
    assert dict(check({"seeds": [0]}, {}))["audio"].startswith("is required")
    assert "non-negative integers" in dict(check({"audio": "a", "seeds": [-1]}, {}))["seeds"]


def test_more_than_one_process_is_refused():
    assert "one process" in dict(check({"audio": WAV, "seeds": [0]}, {"world_size": 2}))[""]


def test_every_file_the_config_names_is_checked_before_submitting(tmp_path):
    """The audio, photo, poses and checkpoints a config names must be there; a checkpoint left
    unset is what the run's audio2nerf stage will write, so it is not required."""
    assert check({"audio": WAV, "seeds": [0]}, {}) == []
    problems = dict(check({"audio": str(tmp_path / "missing.wav"), "seeds": [0], "face_image": str(tmp_path),
                           "camera": "poses", "poses": "nope.json", "audio2nerf": "no/ckpt", "generator": "no/g"}, {}))
    assert set(problems) == {"audio", "face_image", "poses", "audio2nerf", "generator"}
    assert problems["audio"].startswith(f"'{tmp_path}/missing.wav' does not exist (the speech file")
    assert "is a folder, not a file" in problems["face_image"]

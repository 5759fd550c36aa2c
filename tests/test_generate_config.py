"""The `generate` stage's config check, as the launcher runs it before submitting."""
from nerffacespeech.configs.generate import GenerateConfig, check


def test_a_valid_config_parses_with_defaults():
    cfg, problems = GenerateConfig.parse({"audio": "a.wav", "seeds": [0, 3]})
    assert problems == [] and cfg.truncation == 0.7 and cfg.seeds == (0, 3) and cfg.camera == "fixed"


def test_every_problem_is_reported_with_its_field():
    problems = dict(check({"audio": "a.wav", "seeds": [], "camera": "poses", "truncation": 2, "crf": 60,
                           "smoothing": 1}, {}))
    assert "unknown key" in problems["smoothing"]
    problems = dict(check({"audio": "a.wav", "seeds": [], "camera": "poses", "truncation": 2, "crf": 60}, {}))
    assert set(problems) == {"seeds", "truncation", "poses", "crf"}
    assert "no identity" in problems["seeds"] and "poses.json" in problems["poses"]
    assert dict(check({"seeds": [0]}, {}))["audio"].startswith("is required")
    assert "non-negative integers" in dict(check({"audio": "a", "seeds": [-1]}, {}))["seeds"]


def test_more_than_one_process_is_refused():
    assert "one process" in dict(check({"audio": "a.wav", "seeds": [0]}, {"world_size": 2}))[""]

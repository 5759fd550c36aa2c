"""The demo's starting weights: exported from a run's newest checkpoint into one safetensors file
(nerffacespeech.pretrained.demo_weights), loaded back through each stage's `init_from`, and the
committed ones (pretrained_networks/demo/) fit the networks jobs/demo.yaml builds."""
import hashlib
from dataclasses import replace

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from nerffacespeech.configs.audio2nerf import ModelConfig as A2NModel, check as a2n_check
from nerffacespeech.configs.stylenerf import PRESETS, TrainConfig
from nerffacespeech.models.stylenerf import Discriminator, Generator
from nerffacespeech.pretrained.demo_weights import export
from nerffacespeech.train import audio2nerf, stylenerf
from nerffacespeech.train.a2n_objective import Objective

from tests.launcher_helpers import REPO

SMALL_A2N = A2NModel(audio_dim=16, nerf_dim=32, encoder_width=0.25, lipaint_layers=2)
DEMO = REPO / "pretrained_networks" / "demo"


def _checkpoint(folder, parts: dict, step: str = "step-000007") -> "Path":
    """A checkpoints/ folder whose `latest` names a step folder holding `parts` as <name>.safetensors."""
    (folder / "checkpoints" / step).mkdir(parents=True)
    for name, module in parts.items():
        save_file({k: v.contiguous() for k, v in module.state_dict().items()},
                  str(folder / "checkpoints" / step / f"{name}.safetensors"))
    (folder / "checkpoints" / "latest").write_text(f"{step}\n")
    return folder / "checkpoints"


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


def test_stylenerf_weights_round_trip_into_a_fresh_training_network_set(tmp_path):
    model = replace(PRESETS["tiny"].model, resolution=32)
    trained = {"G": _randomised(Generator(model), 1), "D": _randomised(Discriminator(model), 2),
               "G_ema": _randomised(Generator(model), 3)}
    out = tmp_path / "demo" / "stylenerf.safetensors"
    assert export("stylenerf", _checkpoint(tmp_path, trained), out) == {"kind": "stylenerf",
                                                                        "checkpoint": "step-000007", "skipped": ""}
    fresh = {"G": Generator(model), "D": Discriminator(model), "G_ema": Generator(model)}
    stylenerf._load_initial_weights(str(out), fresh)
    for name, module in fresh.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, trained[name].state_dict()[key]), (name, key)


def test_audio2nerf_weights_restore_the_networks_and_the_clips_latents(tmp_path, caplog):
    trained = _randomised(Objective(SMALL_A2N, 3, 32, 100.0), 4)
    out = tmp_path / "audio2nerf.safetensors"
    export("audio2nerf", _checkpoint(tmp_path, {"A2N": trained}), out)
    assert set(load_file(str(out))) == set(trained.state_dict())

    fresh = Objective(SMALL_A2N, 3, 32, 100.0)
    audio2nerf._load_initial_weights(str(out), fresh)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key

    other_data = Objective(SMALL_A2N, 5, 32, 100.0)          # five clips: the latents start afresh
    audio2nerf._load_initial_weights(str(out), other_data)
    for key, value in other_data.net.state_dict().items():
        assert torch.equal(value, trained.net.state_dict()[key]), key
    assert not other_data.latents.detach().any()
    assert "its latents are for 3 clips, this data has 5" in caplog.text

    with pytest.raises(ValueError, match="not an audio2nerf objective of this model size"):
        audio2nerf._load_initial_weights(str(out), Objective(replace(SMALL_A2N, lipaint_layers=3), 3, 32, 100.0))


def test_a_run_that_diverged_exports_its_newest_finite_checkpoint(tmp_path):
    good = _randomised(Objective(SMALL_A2N, 3, 32, 100.0), 4)
    diverged = _randomised(Objective(SMALL_A2N, 3, 32, 100.0), 5)
    with torch.no_grad():
        next(diverged.net.parameters()).view(-1)[0] = float("nan")
    _checkpoint(tmp_path, {"A2N": good}, "step-000007")
    checkpoints = _checkpoint(tmp_path, {"A2N": diverged}, "step-000009")
    out = tmp_path / "audio2nerf.safetensors"
    metadata = export("audio2nerf", checkpoints, out)
    assert metadata["checkpoint"] == "step-000007" and metadata["skipped"].startswith("step-000009 (1 non-finite")
    assert all(torch.equal(value, good.state_dict()[key]) for key, value in load_file(str(out)).items())


def test_a_run_with_no_finite_checkpoint_exports_nothing_and_says_so(tmp_path):
    diverged = _randomised(Objective(SMALL_A2N, 3, 32, 100.0), 5)
    with torch.no_grad():
        next(diverged.net.parameters()).view(-1)[0] = float("inf")
    out = tmp_path / "audio2nerf.safetensors"
    with pytest.raises(ValueError, match="no checkpoint with finite weights"):
        export("audio2nerf", _checkpoint(tmp_path, {"A2N": diverged}), out)
    assert not out.exists()


def test_a_missing_audio2nerf_init_from_is_refused_before_submitting(tmp_path):
    problems = dict(a2n_check({"init_from": str(tmp_path / "none.safetensors")}, {"world_size": 1}))
    assert set(problems) == {"init_from"} and "does not exist" in problems["init_from"]


def test_the_committed_demo_weights_are_the_files_their_sums_name():
    sums = dict(reversed(line.split()) for line in (DEMO / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"stylenerf.safetensors", "audio2nerf.safetensors"}
    for name, digest in sums.items():
        assert hashlib.sha256((DEMO / name).read_bytes()).hexdigest() == digest, name


def test_the_demo_job_starts_both_stages_from_the_committed_weights(monkeypatch):
    monkeypatch.chdir(REPO)                              # the spec's paths are relative to the checkout
    stages = yaml.safe_load((REPO / "jobs" / "demo.yaml").read_text())["stages"]
    g_config, problems = TrainConfig.parse(stages["stylenerf"]["config"])
    assert not problems and g_config.init_from == "pretrained_networks/demo/stylenerf.safetensors"
    model = g_config.model_config
    networks = {"G": Generator(model), "D": Discriminator(model), "G_ema": Generator(model)}
    stylenerf._load_initial_weights(g_config.init_from, networks)           # strict: every tensor, every shape

    a2n = stages["audio2nerf"]["config"]
    clips = [c for c in (REPO / "data" / "sample" / "images").glob("*/*") if c.is_dir()]
    objective = Objective(A2NModel(**{k: a2n[k] for k in ("audio_dim", "nerf_dim", "encoder_width")}),
                          len(clips), model.w_dim, 100.0)
    audio2nerf._load_initial_weights(a2n["init_from"], objective)
    assert objective.latents.detach().abs().sum(1).gt(0).all()          # the sample clips' own latents

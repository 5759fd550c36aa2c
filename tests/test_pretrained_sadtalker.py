"""SadTalker's audio encoders are read from a safetensors file with the official names and shapes
and loaded into our audio encoder where shapes agree."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from nerffacespeech.pretrained import sadtalker

torch.set_num_threads(1)


class ConvBlock(torch.nn.Module):
    """SadTalker's Conv2d block: conv_block = (Conv2d, BatchNorm2d), ReLU, optional residual."""

    def __init__(self, cin, cout, k, stride, padding, residual=False):
        super().__init__()
        self.conv_block = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, stride, padding),
                                              torch.nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        return torch.relu(out + x if self.residual else out)


def wav2lip_encoder() -> torch.nn.Sequential:
    """The 13-block audio encoder of SimpleWrapperV2 / AudioEncoder (strides and residuals as there)."""
    strides = [1, 1, 1, (3, 1), 1, 1, 3, 1, 1, (3, 2), 1, 1, 1]
    residual = [False, True, True, False, True, True, False, True, True, False, True, False, False]
    blocks = []
    for (cin, cout, k), stride, res in zip(sadtalker.AUDIO_ENCODER_BLOCKS, strides, residual):
        blocks.append(ConvBlock(cin, cout, k, stride, 1 if k == 3 and cout != 512 else 0, res))
    return torch.nn.Sequential(*blocks)


def randomise_batchnorm(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.num_batches_tracked.fill_(1000)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A file laid out like SadTalker_V0.0.2_256.safetensors (audio parts, plus a pose and a 3DMM key)."""
    torch.manual_seed(0)
    exp_encoder, pose_encoder = wav2lip_encoder().eval(), wav2lip_encoder().eval()
    randomise_batchnorm(exp_encoder, 1)
    randomise_batchnorm(pose_encoder, 2)
    tensors = {f"audio2exp.audio_encoder.{k}": v for k, v in exp_encoder.state_dict().items()}
    tensors["audio2exp.mapping1.weight"] = torch.randn(64, 577)
    tensors["audio2exp.mapping1.bias"] = torch.zeros(64)
    tensors.update({f"audio2pose.audio_encoder.audio_encoder.{k}": v for k, v in pose_encoder.state_dict().items()})
    tensors["audio2pose.netG.decoder.pose_linear.weight"] = torch.randn(6, 6)
    tensors["face_3drecon.fc.weight"] = torch.randn(257, 2048)
    path = tmp_path_factory.mktemp("sadtalker") / "SadTalker_V0.0.2_256.safetensors"
    save_file(tensors, str(path))
    return path, exp_encoder, pose_encoder


class OurAudioEncoder(torch.nn.Module):
    """A stand-in for audio2nerf's audio part: the same encoder, and a head of its own shape."""

    def __init__(self):
        super().__init__()
        self.encoder = wav2lip_encoder()
        self.head = torch.nn.Linear(512 + 70, 64)      # other input size than SadTalker's mapping1

    def forward(self, mel):
        return self.encoder(mel).flatten(1)


def test_the_official_shapes_table_matches_the_file(official):
    path, _, _ = official
    tensors = sadtalker.read(path)
    assert not any(k.startswith("face_3drecon.") for k in tensors)
    assert sadtalker.check_official(tensors, ("audio2exp.", "audio2pose.")) == []
    assert {k for k in tensors if not k.startswith("audio2pose.netG")} == set(sadtalker.OFFICIAL_SHAPES)


@pytest.mark.parametrize("source", ["audio2exp", "audio2pose"])
def test_our_encoder_reproduces_sadtalkers_encoder(official, source):
    path, exp_encoder, pose_encoder = official
    ours = OurAudioEncoder().eval()
    report = sadtalker.init_audio_encoder(ours, path, source=source, target_prefix="encoder.")
    assert report.missing == ["head.weight", "head.bias"] and not report.shape_mismatches
    mel = torch.randn(2, 1, 80, 16, generator=torch.Generator().manual_seed(3))
    expected = (exp_encoder if source == "audio2exp" else pose_encoder)(mel).flatten(1)
    with torch.no_grad():
        assert torch.equal(ours(mel), expected)
    assert expected.shape == (2, 512)


def test_tensors_whose_shapes_disagree_are_reported_and_left_alone(official):
    path, _, _ = official
    ours = OurAudioEncoder()
    before = ours.head.weight.clone()
    rules = sadtalker.encoder_rules("audio2exp", "encoder.")[:1] + (
        sadtalker.Rule(r"audio2exp\.mapping1\.(weight|bias)", r"head.\1"),
        sadtalker.Rule(r".+", None))
    report = sadtalker.init_audio_encoder(ours, path, rules=rules)
    assert report.shape_mismatches == [("audio2exp.mapping1.weight", "head.weight", (64, 577), (64, 582))]
    assert "head.bias" in report.mapped and torch.equal(ours.head.weight, before)


def test_a_file_without_the_official_keys_is_refused_naming_them(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"audio2exp.mapping1.weight": torch.zeros(64, 577)}, str(path))
    with pytest.raises(sadtalker.SadTalkerError, match=r"missing audio2exp\.audio_encoder\.0\.conv_block\.0\.weight"):
        sadtalker.init_audio_encoder(OurAudioEncoder(), path)

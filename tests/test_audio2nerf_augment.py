"""Audio augmentation of audio2nerf's training windows: what it changes, and that it is a pure
function of the batch generator (so a resumed run augments as the uninterrupted one did)."""
import torch

from nerffacespeech.configs.audio2nerf import check
from nerffacespeech.train.a2n_augment import UNITS_PER_DB, MelAugment


def windows(b=4, s=5, value=-1.0):
    return torch.full((b, s, 80, 16), value)


def test_one_level_shift_per_sequence_within_the_gain():
    out = MelAugment(gain_db=6.0, noise=0.0, freq_mask=0)(windows(), torch.Generator().manual_seed(0))
    shift = out + 1.0
    per_sequence = shift.flatten(1)
    assert torch.equal(per_sequence, per_sequence[:, :1].expand_as(per_sequence))     # one value each
    assert shift.abs().max() <= 6.0 * UNITS_PER_DB + 1e-6 and shift.abs().min() > 0


def test_the_level_shift_stays_in_the_log_mel_range():
    out = MelAugment(gain_db=60.0, noise=0.0, freq_mask=0)(windows(value=3.9), torch.Generator().manual_seed(1))
    assert out.max() <= 4.0 and out.min() >= -4.0


def test_a_masked_band_is_consecutive_channels_no_wider_than_freq_mask():
    mel = torch.randn(64, 5, 80, 16).clamp(-4, 4)
    out = MelAugment(gain_db=0.0, noise=0.0, freq_mask=20)(mel, torch.Generator().manual_seed(2))
    changed = (out != mel).any(dim=3).any(dim=1)                  # (sequences, channels)
    widths = changed.sum(1)
    assert widths.max() <= 20 and widths.max() > 10
    for row in changed[widths > 0]:
        band = row.nonzero().flatten()
        assert torch.equal(band, torch.arange(band[0], band[-1] + 1))


def test_the_same_generator_state_gives_the_same_windows_and_another_does_not():
    augment, mel = MelAugment(6.0, 0.3, 20), torch.randn(4, 5, 80, 16)
    first = augment(mel, torch.Generator().manual_seed(3))
    assert torch.equal(first, augment(mel, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augment(mel, torch.Generator().manual_seed(4)))


def test_all_zero_settings_are_inactive():
    assert not MelAugment(0.0, 0.0, 0).active and MelAugment(0.0, 0.1, 0).active


def test_the_config_check_knows_the_feature_extractors_mel_channel_count():
    from nerffacespeech.configs import audio2nerf
    from nerffacespeech.preprocess import audio

    assert audio2nerf.N_MELS == audio.N_MELS


def test_config_check_names_bad_augmentation_fields():
    problems = dict(check({"augment_gain_db": -1, "augment_noise": float("nan"), "augment_freq_mask": 80},
                          {"world_size": 1}))
    assert set(problems) == {"augment_gain_db", "augment_noise", "augment_freq_mask"}

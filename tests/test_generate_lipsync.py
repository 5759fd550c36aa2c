"""The mouth-motion check itself: when expressions open the mouth with the speech's loudness, the
rendered mouth region's distance from rest correlates with the speech energy, and not with the
same energy one second off (tiny model)."""
import numpy as np
import torch

from nerffacespeech.generate import frames, identity, lipsync, speech
from tests.generate_helpers import SPEECH, random_tiny_head


def test_mouth_box_lies_in_the_lower_middle_of_a_frontal_face():
    head = random_tiny_head()
    r0, r1, c0, c1 = lipsync.mouth_box(head.face, 256, head.generator.cfg.fov_degrees)
    assert 128 < (r0 + r1) / 2 < 200 and abs((c0 + c1) / 2 - 128) < 16


def render_driven_by(energy: np.ndarray) -> np.ndarray:
    """The random tiny head's frames with expressions opening the mouth in proportion to `energy`."""
    head = random_tiny_head()
    neutral = torch.zeros(64, requires_grad=True)
    head.face.mouth_opening(neutral).backward()                 # the direction that opens the mouth
    opening = neutral.grad / neutral.grad.norm()
    exps = torch.from_numpy(energy / energy.max()).float()[:, None] * 2.0 * opening
    ws = identity.seed_styles(head.generator, 0, 0.7)
    return np.concatenate(list(frames.render_frames(head.render, ws, exps, head.neutral_expression(),
                                                    torch.zeros(len(exps), 2), 16)))


def speech_and_box():
    head = random_tiny_head()
    audio = speech.load_audio(SPEECH, 120, -50)
    return audio, lipsync.mouth_box(head.face, head.resolution, head.generator.cfg.fov_degrees)


def test_expressions_following_the_energy_move_the_rendered_mouth_with_it():
    audio, box = speech_and_box()
    clip = render_driven_by(lipsync.energy_envelope(audio, speech.frame_count(audio)))
    r = lipsync.correlation(clip, audio, box)
    print(f"mouth distance from rest vs speech energy with energy-driven expressions: r = {r:.3f}")
    assert r > 0.5


def test_a_mouth_moving_with_the_speech_a_second_late_does_not_pass():
    audio, box = speech_and_box()
    clip = render_driven_by(np.roll(lipsync.energy_envelope(audio, speech.frame_count(audio)), 25))
    r = lipsync.correlation(clip, audio, box)
    print(f"... with expressions one second late: r = {r:.3f}")
    assert r < 0.2
    assert lipsync.correlation(clip, audio, box, shift_frames=25) > 0.5     # the measure finds it there

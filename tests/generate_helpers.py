"""What the generation tests share: the sample speech, reading back an MP4's streams, and the
mouth-motion measure of a trained run's clips."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from nerffacespeech.preprocess.video import ffmpeg

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "data" / "sample" / "audio" / "astronaut" / "00001.wav"     # 3.29 s, 16 kHz mono


def random_tiny_head():
    """The tiny preset's talking head at random initialisation, through its public constructor."""
    import torch

    from nerffacespeech.configs.audio2nerf import ModelConfig
    from nerffacespeech.models.audio2nerf import generator_source
    from nerffacespeech.models.audio2nerf.face import load_face_basis
    from nerffacespeech.models.audio2nerf.network import Audio2NeRF
    from nerffacespeech.models.audio2nerf.talking_head import TalkingHead

    torch.manual_seed(0)
    generator = generator_source.build({"kind": "random", "preset": "tiny", "model": {}, "seed": 0})
    net = Audio2NeRF(ModelConfig(nerf_dim=generator.cfg.w_dim, encoder_width=0.25))
    return TalkingHead(net, generator, load_face_basis("synthetic"), "tiny", torch.device("cpu"))


def video_frames(path: Path) -> tuple[float, np.ndarray]:
    """The MP4's frame rate and its decoded (N, H, W, 3) frames."""
    import imageio.v2 as iio

    with iio.get_reader(str(path), "ffmpeg") as reader:
        fps = reader.get_meta_data()["fps"]
        return fps, np.stack(list(reader.iter_data()))


def mouth_speech_correlations(checkpoints: Path, clips: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Pearson r of each clip's mouth-box distance from rest (generate.lipsync; the box of the
    talking head saved in the audio2nerf `checkpoints`) against the energy of SPEECH, and the same
    against the energy one second off (25 frames), which a mouth that follows the speech fails."""
    from nerffacespeech.generate import lipsync, speech
    from nerffacespeech.models.audio2nerf.talking_head import load_talking_head

    head = load_talking_head(checkpoints)
    box = lipsync.mouth_box(head.face, head.resolution, head.generator.cfg.fov_degrees)
    energy = speech.load_audio(SPEECH, 120, -50)
    return ([lipsync.correlation(clip, energy, box) for clip in clips],
            [lipsync.correlation(clip, energy, box, shift_frames=25) for clip in clips])


def audio_seconds(path: Path) -> float:
    """Duration of the MP4's audio stream, by decoding it."""
    done = subprocess.run([ffmpeg(), "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", "16000",
                           "-f", "f32le", "-"], capture_output=True, check=True)
    return len(done.stdout) / 4 / 16000


def files_in(folder: Path) -> list[str]:
    """Every entry of a folder, hidden temporaries included."""
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []

"""The NeRFFaceSpeech workload: data, preprocessing, StyleNeRF, audio2nerf, generation."""

"""Training tasks (StyleNeRF, audio2nerf) and what they share: engines, losses, image data."""

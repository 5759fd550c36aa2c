"""The library job processes use: distributed setup, stop requests, checkpoints, metrics.

Submodules import torch; this package itself does not, so `launcher.runtime.context`
stays importable on the torch-free CLI path.
"""

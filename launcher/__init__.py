"""Turns YAML job specs into Slurm or local torchrun jobs, and gives job processes a runtime.

The CLI path (`python -m launcher`) imports neither torch nor DeepSpeed; `launcher.runtime` does.
"""
__version__ = "0.1.0"

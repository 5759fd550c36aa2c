"""The official pretrained networks: manifest, verification, download, and safe loaders.

This package's top level stays torch-free so the launcher's validation can call
`verify_for_stage(stage_name, root)`; the loaders (stylenerf_pkl, sadtalker, bfm, ...) import
torch or scipy themselves.
"""
from .verify import verify_for_stage

__all__ = ["verify_for_stage"]

"""Packaging: everything declarative lives in setup.cfg; this file only decides the torch pin.

On a machine without torch we pin torch==2.13.0 (a CPU wheel on CI, the CUDA build on a GPU
cluster's index); where torch is already installed (e.g. a GPU image with 2.11) we keep it,
so an install never replaces a working CUDA torch or drags in a second one.
"""
import json
import os
import subprocess
import sys

from setuptools import setup

PINNED_TORCH = "torch==2.13.0"
MIN_TORCH = "torch>=2.4"


def installed_torch_version():
    """Version of torch in the target interpreter, looked up outside pip's isolated build env."""
    clean_env = {k: v for k, v in os.environ.items()
                 if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    probe = ("import importlib.metadata as m, json\n"
             "try: print(json.dumps(m.version('torch')))\n"
             "except m.PackageNotFoundError: print('null')")
    try:
        out = subprocess.run([sys.executable, "-c", probe], env=clean_env, capture_output=True,
                             text=True, timeout=60, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


TORCH = MIN_TORCH if installed_torch_version() else PINNED_TORCH
TRAIN = [TORCH, "deepspeed>=0.19", "safetensors>=0.4", "tensorboard>=2.14", "numpy>=1.24", "kornia>=0.7"]
PREPROCESS = [TORCH, "numpy>=1.24", "scipy>=1.10", "librosa>=0.10", "soundfile>=0.12",
              "face-alignment>=1.4", "kornia>=0.7", "scikit-image>=0.22",
              # OpenCV 5 wheels have no CascadeClassifier; face-alignment pulls opencv-python.
              "opencv-python-headless<5", "opencv-python<5",
              "imageio>=2.31", "imageio-ffmpeg>=0.5",
              # dlib's 68-point landmarker, offline: the model ships in face-recognition-models.
              "dlib-bin>=20.0.1", "face-recognition-models>=0.3.0"]
# Generation reuses preprocessing's audio, ffmpeg and face alignment, and loads safetensors.
GENERATE = PREPROCESS + ["safetensors>=0.4", "tqdm>=4.60"]
# `launcher report RUN` draws its plots with matplotlib (Agg); the rest of the CLI does not need it.
REPORT = ["matplotlib>=3.7"]
DEV = ["pytest>=8", "pytest-timeout>=2.2", "psutil>=5.9"]

setup(extras_require={
    "train": TRAIN,
    "preprocess": PREPROCESS,
    "generate": GENERATE,
    "report": REPORT,
    "dev": DEV,
    "all": sorted(set(TRAIN + GENERATE + REPORT + DEV)),
})

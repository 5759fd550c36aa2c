"""One torchrun rank of the world-size tests (tests/test_stylenerf_world_size.py,
tests/test_audio2nerf_train.py): training task TASK (`stylenerf` or `audio2nerf`) to STEPS in
RUN's stage `train`, resuming from its newest checkpoint.

    torchrun --nproc_per_node N tests/train_worker.py TASK RUN CONFIG_JSON STEPS

`train_on` runs it from a test.
"""
import importlib
import json
import sys
from pathlib import Path

from launcher.runtime.context import CheckpointPolicy, TaskContext
from tests.launcher_helpers import torchrun


def train_on(ranks: int, task: str, run: Path, config: dict, steps: int) -> None:
    """TASK to STEPS on RANKS CPU processes under torchrun (gloo), one thread each."""
    torchrun(ranks, __file__, task, run, json.dumps(config), steps, timeout=600)


def main() -> None:
    task, run, config, steps = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    training = importlib.import_module(f"nerffacespeech.train.{task}")
    training.main(TaskContext(run_dir=run, stage="train", config={**config, "max_steps": steps}, device="cpu",
                              checkpoint=CheckpointPolicy(every_steps=1000, keep_last=5)))


if __name__ == "__main__":
    main()

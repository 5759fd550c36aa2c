"""One torchrun rank of the world-size tests (tests/test_stylenerf_world_size.py,
tests/test_audio2nerf_train.py): training task TASK (`stylenerf` or `audio2nerf`) to STEPS in
RUN's stage `train`, resuming from its newest checkpoint.

    torchrun --nproc_per_node N tests/train_worker.py TASK RUN CONFIG_JSON STEPS

`train_on` runs it from a test.
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from launcher.runtime.context import CheckpointPolicy, TaskContext


def train_on(ranks: int, task: str, run: Path, config: dict, steps: int) -> None:
    """TASK to STEPS on RANKS CPU processes under torchrun (gloo), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(ranks), __file__, task, str(run), json.dumps(config), str(steps)],
                          env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def main() -> None:
    task, run, config, steps = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    training = importlib.import_module(f"nerffacespeech.train.{task}")
    training.main(TaskContext(run_dir=run, stage="train", config={**config, "max_steps": steps}, device="cpu",
                              checkpoint=CheckpointPolicy(every_steps=1000, keep_last=5)))


if __name__ == "__main__":
    main()

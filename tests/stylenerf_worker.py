"""One torchrun rank of the StyleNeRF world-size test (tests/test_stylenerf_world_size.py):
`stylenerf.train` to STEPS in RUN's stage `train`, resuming from its newest checkpoint.

    torchrun --nproc_per_node N tests/stylenerf_worker.py RUN CONFIG_JSON STEPS
"""
import json
import sys
from pathlib import Path

from launcher.runtime.context import CheckpointPolicy, TaskContext
from nerffacespeech.train import stylenerf


def main() -> None:
    run, config, steps = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
    stylenerf.main(TaskContext(run_dir=run, stage="train", config={**config, "max_steps": steps}, device="cpu",
                               checkpoint=CheckpointPolicy(every_steps=1000, keep_last=5)))


if __name__ == "__main__":
    main()

"""One torchrun rank of the loss-scaler reshard test (tests/test_runtime_reshard.py).

    torchrun --nproc_per_node N tests/loss_scaler_worker.py RUN ZERO_STAGE save|load OUT

save: one training step of the toy model under DeepSpeed ZeRO, then fp16's dynamic loss scaler
      with a state of its own put into the optimizer (DeepSpeed's CPU accelerator refuses fp16,
      so it cannot get there by training here), and a checkpoint at step 1.
load: the newest checkpoint restored on this world size (a reshard where it differs); rank 0
      writes the optimizer's loss-scaler state to OUT as JSON.
"""
import json
import sys
from pathlib import Path

import torch

from launcher import diagnose_train
from launcher.runtime import checkpoint, distributed
from launcher.runtime.context import CheckpointPolicy, TaskContext

SCALER_STATE = {"cur_scale": 2048.0, "cur_iter": 123, "last_overflow_iter": 100, "cur_hysteresis": 1}


def main() -> None:
    run, stage, phase, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    torch.set_num_threads(1)
    ctx = TaskContext(run_dir=run, stage="train", config={}, device="cpu", checkpoint=CheckpointPolicy())
    cfg = diagnose_train.ToyConfig.from_dict({"engine": "deepspeed", "zero_stage": stage, "width": 33,
                                              "batch_size": 4})
    env = distributed.init("cpu")
    engine = diagnose_train.DeepSpeedEngine(cfg, diagnose_train.build_model(cfg), env)
    manager = checkpoint.CheckpointManager(ctx.checkpoint_dir, env)
    state = {**engine.state, "progress": {}}
    if phase == "save":
        inputs, targets = diagnose_train.make_dataset(cfg)
        engine.train_step(inputs[:cfg.batch_size], targets[:cfg.batch_size])
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

        scaler = DynamicLossScaler(init_scale=1.0, scale_window=500, min_scale=1.0, delayed_shift=2,
                                   consecutive_hysteresis=False)
        vars(scaler).update(SCALER_STATE)
        engine.engine.optimizer.loss_scaler = scaler
        manager.save(1, state, blocking=True)
    else:
        assert manager.restore_latest(state) == 1
        scaler = engine.engine.optimizer.loss_scaler
        if env.is_main:
            out.write_text(json.dumps({"type": type(scaler).__name__, **{k: getattr(scaler, k) for k in SCALER_STATE}}))
    distributed.barrier(env)
    distributed.shutdown()


if __name__ == "__main__":
    main()

"""One torchrun rank of the reshard tests (tests/test_runtime_reshard.py): `diagnose.train` to
STEPS in RUN's stage `train`, with the full state of the newest checkpoint gathered before
(as this world size loads it) and after, each written by rank 0 as OUT/<start|end>-w<world>.pt;
PROBES (default "start,end") says which of the two to gather.

    torchrun --nproc_per_node N tests/reshard_worker.py RUN CONFIG_JSON STEPS OUT [PROBES]
"""
import json
import sys
from pathlib import Path

import torch

from launcher import diagnose_train
from launcher.runtime import checkpoint, distributed
from launcher.runtime.context import CheckpointPolicy, TaskContext


def gathered_state(cfg: diagnose_train.ToyConfig, ctx: TaskContext) -> dict:
    """Load the newest checkpoint into a fresh engine; every fp32 parameter and Adam moment, whole."""
    env = distributed.init("cpu")
    engine = (diagnose_train.DeepSpeedEngine if cfg.engine == "deepspeed" else diagnose_train.DDPEngine)(
        cfg, diagnose_train.build_model(cfg), env)
    progress: dict = {}
    step = checkpoint.CheckpointManager(ctx.checkpoint_dir, env).restore_latest(
        {**engine.state, "progress": progress})
    full = {"step": step, "progress": dict(progress), "tensors": {}}
    if cfg.engine == "deepspeed":
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        link_moments = getattr(engine.engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link_moments is not None:         # ZeRO-1/2 link them at the first step, none was taken here
            link_moments()
        for name, param in engine.engine.module.named_parameters():
            full["tensors"][name] = safe_get_full_fp32_param(param).clone()
            for key in ("exp_avg", "exp_avg_sq"):
                full["tensors"][f"{name}.{key}"] = safe_get_full_optimizer_state(param, key).clone()
    else:
        for name, param in engine.model.module.named_parameters():
            full["tensors"][name] = param.detach().clone()
            for key in ("exp_avg", "exp_avg_sq", "step"):
                full["tensors"][f"{name}.{key}"] = engine.optimizer.state[param][key].clone()
    return full


def main() -> None:
    run, config, steps, out = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    probes = (sys.argv[5] if len(sys.argv) > 5 else "start,end").split(",")
    torch.set_num_threads(1)
    ctx = TaskContext(run_dir=run, stage="train", config={**config, "steps": steps}, device="cpu",
                      checkpoint=CheckpointPolicy(every_steps=1000, keep_last=5))
    cfg = diagnose_train.ToyConfig.from_dict(ctx.config)
    env = distributed.init("cpu")
    leave = distributed.shutdown
    distributed.shutdown = lambda: None         # the task leaves the group; the probe after it needs it
    for phase in ("start", "end"):
        if phase == "end":
            diagnose_train.main(ctx)
        if phase in probes and checkpoint.committed_steps(ctx.checkpoint_dir):
            full = gathered_state(cfg, ctx)
            if env.is_main:
                out.mkdir(parents=True, exist_ok=True)
                torch.save(full, out / f"{phase}-w{env.world_size}.pt")
    distributed.barrier(env)
    leave()


if __name__ == "__main__":
    main()

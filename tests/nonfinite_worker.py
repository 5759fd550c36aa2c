"""One torchrun rank of the DeepSpeed non-finite guard test (tests/test_engine_nonfinite_grads.py).

    torchrun --nproc_per_node 2 tests/nonfinite_worker.py OUT ENGINE...      (ENGINE: zero2-fp32, ...)

For each engine, a network of two independent branches (`big` holds most weights, so under
ZeRO-1/2 the flat partition of rank 0 holds none of `small`) takes two steps: a finite one, then
one where rank 1's input to `small` is NaN. Rank 0 writes, per engine, the flags every rank's
`step()` returned, and which branches the bad step moved or left non-finite, to OUT as JSON.
"""
import json
import sys
from pathlib import Path

import torch
from torch import nn

from launcher.runtime import distributed
from nerffacespeech.train.engine import EngineSpec, make_trainable


class TwoBranches(nn.Module):
    """Two losses on separate weights: a NaN in one branch's input leaves the other's gradient finite."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.big, self.small = nn.Linear(64, 64), nn.Linear(4, 1)

    def forward(self, x_big: torch.Tensor, x_small: torch.Tensor) -> torch.Tensor:
        dtype = self.big.weight.dtype
        return self.big(x_big.to(dtype)).float().square().mean() + self.small(x_small.to(dtype)).float().square().mean()


def branch_weights(net) -> dict[str, torch.Tensor]:
    with net.gathered() as tensors:
        return {branch: torch.cat([t.detach().float().flatten() for name, t in tensors.items()
                                   if name.startswith(branch)]) for branch in ("big", "small")}


def run_engine(label: str, env) -> dict:
    stage, precision = label.split("-")
    spec = EngineSpec("deepspeed", int(stage.removeprefix("zero")), precision, 1e-2, (0.0, 0.99), 1e-8, 4)
    net = make_trainable("net", TwoBranches(), TwoBranches, spec, env)
    inputs = torch.Generator().manual_seed(env.rank)
    flags = []
    for bad in (False, True):
        x_big, x_small = torch.randn(4, 64, generator=inputs), torch.randn(4, 4, generator=inputs)
        if bad and env.rank == 1:
            x_small[0, 0] = float("nan")
        before = branch_weights(net)
        net.backward(net(x_big, x_small))
        flag = net.step()
        flags.append(float(flag))
        after = branch_weights(net)
    moved = {branch: not torch.equal(after[branch], before[branch]) for branch in after}
    finite = {branch: bool(torch.isfinite(after[branch]).all()) for branch in after}
    every_rank = [None] * env.world_size
    torch.distributed.all_gather_object(every_rank, flags)
    return {"flags": every_rank, "moved_by_bad_step": moved, "finite": finite}


def main() -> None:
    out, labels = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    env = distributed.init("cpu")
    results = {label: run_engine(label, env) for label in labels}
    if env.is_main:
        out.write_text(json.dumps(results))
    distributed.barrier(env)
    distributed.shutdown()


if __name__ == "__main__":
    main()

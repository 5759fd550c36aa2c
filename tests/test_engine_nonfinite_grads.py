"""A step whose gradient is NaN or infinite never reaches the weights (fp32 or bf16, DDP and
DeepSpeed at every ZeRO stage, as StyleGAN2-ADA guards its updates): the gradient is zeroed, the
step says so on every rank, and the weights stay finite; finite gradients go through untouched.
Seen on a GPU: one NaN step made the demo-weights StyleNeRF train on NaN for the rest of the run
(docs/DEMO_WEIGHTS.md)."""
import json
import math

import pytest
import torch
from torch import nn

from launcher.runtime.distributed import single_process_env
from nerffacespeech.train import losses
from nerffacespeech.train.engine import EngineSpec, make_trainable, zero_non_finite
from tests.launcher_helpers import REPO, torchrun

DEEPSPEED_ENGINES = ["zero0-fp32", "zero1-fp32", "zero2-fp32", "zero3-fp32", "zero2-bf16"]


def _trainable(precision: str = "fp32"):
    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    return make_trainable("net", factory(), factory, EngineSpec("ddp", 0, precision, 1e-2, (0.0, 0.99), 1e-8, 4),
                          single_process_env())


def _step(net, inputs: torch.Tensor):
    net.backward(net(inputs).float().square().mean())
    return net.step()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_gradient_is_zeroed_and_reported(bad):
    net = _trainable()
    assert float(_step(net, torch.ones(4, 4))) == 0.0
    before = [p.detach().clone() for p in net.module.parameters()]
    assert float(_step(net, torch.full((4, 4), bad))) == 1.0
    after = list(net.module.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    # beta1 = 0: a zero gradient moves nothing, so the weights are exactly those before the step
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_finite_gradients_pass_unchanged():
    guarded, plain = _trainable(), _trainable()
    optimizer = plain.optimizer
    inputs = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        _step(guarded, inputs)
        plain.module(inputs).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert all(torch.equal(a, b) for a, b in zip(guarded.module.parameters(), plain.module.parameters()))


def test_the_path_length_mean_keeps_its_value_through_a_non_finite_batch():
    mean = torch.tensor(0.5)
    moved = losses.updated_path_length_mean(mean, torch.tensor([1.0, 2.0]).mean(), 0.5)
    kept = losses.updated_path_length_mean(mean, torch.tensor([1.0, math.nan]).mean(), 0.5)
    assert float(moved) == 1.0 and float(kept) == 0.5


def test_huge_finite_gradients_are_neither_counted_nor_changed():
    grads = [torch.full((4,), 3e38)]                  # their sum of squares would overflow to inf
    assert float(zero_non_finite(grads)) == 0.0
    assert torch.equal(grads[0], torch.full((4,), 3e38))


@pytest.fixture(scope="module")
def deepspeed_runs(tmp_path_factory) -> dict:
    """Each DeepSpeed engine on 2 ranks: a finite step, then one where rank 1's input to the
    small branch is NaN (tests/nonfinite_worker.py)."""
    out = tmp_path_factory.mktemp("guard") / "runs.json"
    torchrun(2, REPO / "tests" / "nonfinite_worker.py", out, *DEEPSPEED_ENGINES)
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("engine", DEEPSPEED_ENGINES)
def test_deepspeed_zeroes_a_non_finite_gradient_and_every_rank_reports_it(deepspeed_runs, engine):
    """Under ZeRO-1/2 the NaN lies in rank 1's partition only; rank 0 reports the step all the same."""
    run = deepspeed_runs[engine]
    assert run["flags"] == [[0.0, 1.0], [0.0, 1.0]]
    assert run["finite"] == {"big": True, "small": True}
    # the branch with the finite gradient trains on; the other's zeroed gradient moves nothing
    # (beta1 = 0); ZeRO-3 skips the whole step itself (it takes the global gradient norm)
    assert run["moved_by_bad_step"] == {"big": engine != "zero3-fp32", "small": False}
